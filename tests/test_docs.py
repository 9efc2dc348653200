"""The documentation cannot drift: settings pages match the code and ini files, examples run."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.pywps_backend import PyWPSBackend
from tests.servers import serve_wsgi
from twitcher import rpcinterface
from twitcher.client import build_parser
from twitcher.settings import TwitcherSettings, env_var_name, parse_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
INI_FILES = ("development.ini", "production.ini")
FIELDS = [field.name for field in dataclasses.fields(TwitcherSettings)]
#: The WPS_URL the examples fall back to, and the one their documented output shows.
DOCUMENTED_WPS_URL = "http://localhost:5000/wps"
#: Seconds an example may take; they make a handful of local requests.
EXAMPLE_TIMEOUT = 60

# A key line, active or commented out (production.ini leaves twitcher.password commented).
_INI_KEY = re.compile(r"^#?\s*twitcher\.(\w+)\s*=", re.MULTILINE)
_CONFVAL = re.compile(r"^\.\. confval:: twitcher\.(\w+)\s*$", re.MULTILINE)


def ini_keys(name: str) -> List[str]:
    return _INI_KEY.findall((ROOT / name).read_text(encoding="utf-8"))


def documented_keys() -> List[str]:
    return _CONFVAL.findall((DOCS / "configuration.rst").read_text(encoding="utf-8"))


def confval_body(key: str) -> str:
    """The text of one setting's entry on the configuration page, up to the next heading or entry."""
    text = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    start = text.index(f".. confval:: twitcher.{key}\n")
    following = re.compile(r"^(\.\. confval::|\S.*\n=+$)", re.MULTILINE).search(text, start + 1)
    return text[start:following.start() if following else len(text)]


# -- configuration page -------------------------------------------------------------------


@pytest.mark.parametrize("ini", INI_FILES)
def test_every_ini_key_is_documented(ini):
    missing = [key for key in ini_keys(ini) if key not in documented_keys()]
    assert not missing, f"{ini} has twitcher.* keys that docs/configuration.rst does not describe: {missing}"


@pytest.mark.parametrize("ini", INI_FILES)
def test_ini_lists_every_setting_in_field_order(ini):
    assert ini_keys(ini) == FIELDS


def test_configuration_page_follows_the_ini_order():
    assert documented_keys() == ini_keys("development.ini")


@pytest.mark.parametrize("key", FIELDS)
def test_each_setting_has_type_default_and_environment_variable(key):
    body = confval_body(key)
    assert "   :type: " in body
    assert "   :default: " in body
    assert env_var_name(key) in body


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(TwitcherSettings)
                                 if isinstance(f.default, (bool, int, float, str)) and f.default != ""])
def test_documented_defaults_match_the_code(key):
    default = getattr(TwitcherSettings(), key)
    shown = re.search(r":default: ``([^`]*)``", confval_body(key)).group(1)
    expected = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(
        default, float) else str(default)
    assert shown == expected


def test_documented_defaults_of_lists_match_the_parsed_defaults():
    defaults = parse_settings({"twitcher.password": "x"}, environ={})
    shown = re.search(r":default: ``([^`]*)``", confval_body("public_requests")).group(1)
    assert parse_settings({"twitcher.password": "x", "twitcher.public_requests": shown},
                          environ={}).public_requests == defaults.public_requests
    shown = re.search(r":default: ``([^`]*)``", confval_body("proxy_timeout")).group(1)
    assert tuple(float(word) for word in shown.split()) == defaults.proxy_timeout


def test_readme_keeps_the_two_commands_the_installation_page_repeats():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    installation = (DOCS / "installation.rst").read_text(encoding="utf-8")
    for command in ("make start", "make test"):
        assert command in readme
        assert command in installation


# -- quick start examples against a live Twitcher in front of a real PyWPS ------------------


@pytest.fixture
def wps_backend(tmp_path) -> Iterator[str]:
    """A real PyWPS on 127.0.0.1 offering ``hello``; yields its WPS endpoint URL."""
    backend = PyWPSBackend(root=tmp_path / "backend")
    with serve_wsgi(backend) as base_url:
        backend.configure(base_url)
        yield f"{base_url}/wps"


@pytest.fixture
def example_env(live_twitcher, wps_backend) -> Dict[str, str]:
    """The environment the quick start asks the reader to set, pointing at live servers."""
    env = dict(os.environ)
    env.update(TWITCHER_URL=live_twitcher, WPS_URL=wps_backend, TWITCHER_PASSWORD=ADMIN_PASSWORD,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def run_example(command: List[str], env: Dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, cwd=ROOT)
    assert done.returncode == 0, f"{command[-1]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_quickstart_shell_example_runs(example_env):
    output = run_example(["bash", str(EXAMPLES / "quickstart.sh")], example_env).splitlines()
    # What docs/installation.rst shows, after twitcherctl's description of the service.
    assert output[-4:] == ["<ows:Identifier>hello</ows:Identifier>", "without a token: 401",
                           "Hello you", "Hello you"]


def test_quickstart_python_example_runs(example_env):
    output = run_example([sys.executable, str(EXAMPLES / "quickstart_owslib.py")], example_env).splitlines()
    assert output[0] == f"registered emu -> {example_env['WPS_URL']}"
    assert "hello" in output[1]
    assert output[-2:] == ["status: ProcessSucceeded", "output: Hello you"]


def test_admin_api_example_prints_what_the_page_shows(example_env):
    output = run_example([sys.executable, str(EXAMPLES / "admin_portal.py")], example_env)
    documented = (EXAMPLES / "admin_portal.out").read_text(encoding="utf-8")
    assert output.replace(example_env["WPS_URL"], DOCUMENTED_WPS_URL) == documented


def test_every_example_is_shown_on_a_page():
    pages = "".join(page.read_text(encoding="utf-8") for page in DOCS.glob("*.rst"))
    for example in EXAMPLES.iterdir():
        assert f":: examples/{example.name}" in pages, f"{example.name} is tested but shown nowhere"


# -- admin API and twitcherctl reference ---------------------------------------------------


def test_admin_api_page_documents_every_method_and_fault_code():
    page = (DOCS / "adminapi.rst").read_text(encoding="utf-8")
    for method in rpcinterface.METHODS:
        assert f".. autofunction:: twitcher.rpcinterface.{method.__name__}(" in page
    codes = [value for name, value in vars(rpcinterface).items() if name.startswith("FAULT_")]
    for code in codes:
        assert f"   * - ``{code}``" in page


def test_twitcherctl_page_has_a_section_with_help_for_every_command():
    page = (DOCS / "twitcherctl.rst").read_text(encoding="utf-8")
    parser = build_parser()
    commands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    for name in commands[0].choices:
        assert f"\n{name}\n{'-' * len(name)}\n" in page
        assert f"   :command: {name}\n" in page
