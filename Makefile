# Twitcher: `make` alone lists the targets.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INI ?= development.ini

.DEFAULT_GOAL := help
.PHONY: help install start test lint docs bench compare fuzz soak clean

help: ## show this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e ".[test,wps,docs,prod]"
	touch $@

install: $(VENV)/.installed ## create .venv and install Twitcher with its test, wps and docs extras

start: install ## run Twitcher on http://localhost:8000 with the embedded SQLite store
	$(BIN)/pserve $(INI)

# Debian's nginx for the data-plane tests and benchmark, when missing and we are root (as wrk);
# RUNLEVEL=1 keeps the package from starting a system nginx on port 80.
NGINX_INSTALL = command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || [ "$$(id -u)" != 0 ] \
	|| RUNLEVEL=1 apt-get install -y -qq nginx >/dev/null \
	|| (apt-get update -qq && RUNLEVEL=1 apt-get install -y -qq nginx >/dev/null) \
	|| echo "nginx could not be installed: the nginx tests are skipped"

test: install ## run the linter and the whole test suite (installs nginx when missing and root)
	@$(NGINX_INSTALL)
	$(BIN)/ruff check twitcher tests bench fuzz
	$(BIN)/pytest

lint: install ## check the code with ruff
	$(BIN)/ruff check twitcher tests bench fuzz

# -E: read every page afresh, so that no warning is hidden by an earlier build.
docs: install ## build the Sphinx documentation, warnings as errors
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

bench: install ## benchmark pserve production.ini (Python and nginx data planes) against the direct backend on 127.0.0.1, then signed-token checks; needs wrk and nginx (BENCH_ARGS="--profile 8": py-spy)
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -qq wrk
	@$(NGINX_INSTALL)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/signed_tokens.py

COMPARE_BASE ?= HEAD
compare: install ## the working tree against commit COMPARE_BASE (default HEAD), side by side in one run (COMPARE_ARGS="--only getcaps --rounds 7")
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -qq wrk
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m bench.compare --base $(COMPARE_BASE) $(COMPARE_ARGS)

FUZZ_SECONDS ?= 600
fuzz: install ## fuzz each parser and rewriter with atheris for FUZZ_SECONDS (default 600) each; fails on a finding
	$(BIN)/pip install --quiet -e ".[fuzz]"
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) $(if $(FUZZ_TARGETS),--targets $(FUZZ_TARGETS))

SOAK_SECONDS ?= 600
soak: install ## 64 clients against a real Twitcher for SOAK_SECONDS (default 600), the store gone for 30 s half-way
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

clean: ## remove the virtualenv, build output and local databases
	rm -rf $(VENV) build dist *.egg-info docs/_build var .pytest_cache .ruff_cache fuzz/out
