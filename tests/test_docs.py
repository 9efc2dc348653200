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
from twitcher.admin import rpcinterface
from twitcher.admin.client import build_parser
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
        assert f".. autofunction:: twitcher.admin.rpcinterface.{method.__name__}(" in page
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


# -- troubleshooting page: the error table is what Twitcher answers ------------------------

_ROW = re.compile(r"^   \* - (.*)$")
_CELL = re.compile(r"^     - (.*)$")
_CONTINUED = re.compile(r"^       (\S.*)$")
_PLACEHOLDER = re.compile(r"<[A-Za-z]+>")


def documented_errors() -> List[List[str]]:
    """The rows (HTTP, exceptionCode, locator, text) of the error table on the troubleshooting page."""
    text = (DOCS / "troubleshooting.rst").read_text(encoding="utf-8")
    table = text[text.index("   * - HTTP\n"):]
    rows: List[List[str]] = []
    for line in table.splitlines():
        if _ROW.match(line):
            rows.append([_ROW.match(line).group(1)])
        elif _CELL.match(line) and rows:
            rows[-1].append(_CELL.match(line).group(1))
        elif _CONTINUED.match(line) and rows:
            rows[-1][-1] += " " + _CONTINUED.match(line).group(1)
        elif line and not line.startswith(" "):
            break
    return [row[:4] for row in rows[1:]]


def _pattern(cell: str) -> re.Pattern:
    parts = _PLACEHOLDER.split(cell)
    return re.compile(".+".join(re.escape(part) for part in parts) + r"\Z")


def documented_row_of(answer) -> List[str]:
    """The documented row that matches an ExceptionReport answer; fails when there is none."""
    from lxml import etree

    exception = etree.fromstring(answer.body)[0]
    seen = [str(answer.status_int), exception.get("exceptionCode"), exception.get("locator") or "(none)",
            exception[0].text]
    for row in documented_errors():
        if all(_pattern(cell).match(value) for cell, value in zip(row, seen)):
            return row
    raise AssertionError(f"docs/troubleshooting.rst has no row for {seen}")


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/wps"


def _slow_app(environ, start_response):
    """A backend whose WPS answers later than the proxy's read timeout in the test below."""
    import time

    if environ["PATH_INFO"] == "/wps":  # not "/": serve_wsgi polls that to see the server is up
        time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"too late"]


#: Requests that provoke each error of the table; "{token}" etc. are filled in by the test.
_EXECUTE = "service=WPS&version=1.0.0&request=Execute&identifier=hello"
ERROR_REQUESTS = [
    ("GET", "/ows/proxy/emu?request=GetCapabilities", None),
    ("GET", "/ows/proxy/emu?service=WPS", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=GetCapabilities&version=", None),
    ("GET", "/ows/proxy/emu?service=FOO&request=GetCapabilities", None),
    ("GET", "/ows/proxy/emu?service=WMS&request=GetCapabilities", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=Get-Capabilities", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=GetCapabilities&version=one", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=GetCapabilities&REQUEST=Execute", None),
    ("GET", "/ows/proxy/emu?service=WPS&DataInputs=a=1;request=GetCapabilities&request=Execute", None),
    ("POST", "/ows/proxy/emu?request=GetCapabilities",
     b'<wps:Execute xmlns:wps="http://www.opengis.net/wps/1.0.0" service="WPS" version="1.0.0"/>'),
    ("GET", f"/ows/proxy/emu?{_EXECUTE}&access_token={{token}}&token=another", None),
    ("GET", "/ows/proxy/emu/..%2Fsecret?access_token={token}", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=GetMap", None),
    ("PUT", "/ows/proxy/emu?service=WPS&request=GetCapabilities", b""),
    ("POST", "/ows/proxy/emu", b""),
    ("POST", "/ows/proxy/emu", b"<wps:Execute"),
    ("POST", "/ows/proxy/emu", b'<!DOCTYPE x [<!ENTITY a "b">]><x service="WPS"/>'),
    ("POST", "/ows/proxy/emu", b"<x/>" + b" " * 2048),
    ("GET", f"/ows/proxy/emu?{_EXECUTE}", None),
    ("GET", f"/ows/proxy/emu?{_EXECUTE}&access_token=not-a-token", None),
    ("GET", f"/ows/proxy/emu?{_EXECUTE}&access_token={{expired}}", None),
    ("GET", f"/ows/proxy/emu?{_EXECUTE}&access_token={{revoked}}", None),
    ("GET", "/ows/proxy/nothing-here?service=WPS&request=GetCapabilities", None),
    ("GET", "/ows/elsewhere?access_token={token}", None),
    ("GET", "/ows/proxy/emu?service=WPS&request=GetCapabilities", None),
    ("GET", "/ows/proxy/slow?service=WPS&request=GetCapabilities", None),
]


def test_troubleshooting_table_lists_exactly_the_errors_twitcher_answers(make_app, store, dead_mongodb_url):
    from datetime import timedelta

    from twitcher.services import Service
    from twitcher.tokens import new_token, utcnow

    tokens = {}
    for name, start in (("token", utcnow()), ("expired", utcnow() - timedelta(hours=2)),
                        ("revoked", utcnow())):
        tokens[name], record = new_token(1, now=start)
        store.save_token(record)
    revoked_digest = record.digest
    store.revoke_token(revoked_digest)
    store.save_service(Service(name="emu", url=_closed_port_url()))
    with serve_wsgi(_slow_app) as slow_url:
        store.save_service(Service(name="slow", url=f"{slow_url}/wps"))
        app = make_app(max_request_body=1024, proxy_timeout="2 0.2")
        answers = []
        for method, path, body in ERROR_REQUESTS:
            url = path.format(**tokens)
            if body is None:
                answers.append(app.request(url, method=method, expect_errors=True))
            else:
                answers.append(app.request(url, method=method, body=body, content_type="text/xml",
                                           expect_errors=True))
    answers.append(make_app(db_url=dead_mongodb_url).get(f"/ows/proxy/emu?{_EXECUTE}&access_token=x",
                                                        expect_errors=True))

    for answer in answers:
        assert answer.content_type == "text/xml"
        if answer.status_int == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    produced = [documented_row_of(answer) for answer in answers]
    never_seen = [row for row in documented_errors() if row not in produced]
    assert not never_seen, f"documented errors that no request in this test provokes: {never_seen}"


# -- README: the first ten minutes work against the demo WPS of development.ini -------------


def readme_example() -> str:
    """The shell lines of the README's first ``code-block:: bash``."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    block = text[text.index(".. code-block:: bash\n") + len(".. code-block:: bash\n"):]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


@pytest.fixture
def demo_twitcher(app_settings, tmp_path) -> Iterator[str]:
    """Twitcher with the internal demo WPS of ``development.ini``, served on 127.0.0.1."""
    from tests.servers import serve_twitcher

    with serve_twitcher({**app_settings, "twitcher.wps": "true",
                         "twitcher.wps_processes": "twitcher.wpsprocesses.demo_processes",
                         "twitcher.wps_workdir": str(tmp_path / "wps")}) as base_url:
        yield base_url


def test_readme_example_mints_a_token_and_runs_execute(demo_twitcher):
    script = readme_example()
    assert len(script.splitlines()) == 5
    script = (script.replace("demo-only-change-me", ADMIN_PASSWORD)
              .replace("http://localhost:8000", demo_twitcher)
              .replace(".venv/bin/", f"{Path(sys.executable).parent}/"))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["<ows:Identifier>hello</ows:Identifier>", "401", "Hello you"]


def test_ogcapi_page_shows_the_classification_table_of_the_code():
    from twitcher.ogcapi.routes import DEFAULT_RULES, describe_rules

    text = (DOCS / "ogcapi.rst").read_text(encoding="utf-8")
    table = text[text.index(":name: ogcapi-public-table"):]
    table = table[: table.index("\n\n", table.index("* - methods"))]
    cells = re.findall(r"^\s+[*]? +- (.*)$", table, re.MULTILINE)
    rows = [tuple(c.strip("`") for c in cells[i:i + 3]) for i in range(3, len(cells), 3)]
    assert rows == describe_rules(DEFAULT_RULES)
