"""twitcherctl: every command against a live Twitcher, and every error path (exit 1, one line)."""
from __future__ import annotations

import io
import json
import socket
from datetime import timedelta

import pytest

from tests.conftest import ADMIN_PASSWORD
from twitcher.admin.auth import verify_password
from twitcher.admin.client import main, rpc_url
from twitcher.services import Service
from twitcher.tokens import AccessToken, new_token, token_digest, utcnow

WPS_URL = "http://wps.example.org/emu/wps"


@pytest.fixture
def ctl(live_twitcher, capsys):
    """Run ``twitcherctl --json -s <live server> -p <admin password> ARGS``; return (status, result)."""
    def run(*args, json_output=True):
        options = ["-s", live_twitcher, "-p", ADMIN_PASSWORD] + (["--json"] if json_output else [])
        status = main(options + list(args))
        out, err = capsys.readouterr()
        return status, (json.loads(out) if json_output and status == 0 else out), err

    return run


def one_error_line(capsys_err: str, *words: str) -> None:
    lines = capsys_err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twitcherctl: error:"), capsys_err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("given", "expected"), [
    ("http://localhost:8000", "http://localhost:8000/RPC2"),
    ("http://localhost:8000/", "http://localhost:8000/RPC2"),
    ("https://example.org/twitcher/RPC2", "https://example.org/twitcher/RPC2"),
    ("https://example.org/twitcher/", "https://example.org/twitcher/RPC2"),
])
def test_rpc_url_appends_rpc2_when_absent(given, expected):
    assert rpc_url(given) == expected


def test_gentoken_prints_a_token_the_store_knows(ctl, store):
    status, answer, _ = ctl("gentoken", "-H", "2", "-e", "USER_ID=alice", "-e", "ROLE=x=y")
    assert status == 0
    record = store.fetch_token(token_digest(answer["access_token"]))
    assert record.environ == {"USER_ID": "alice", "ROLE": "x=y"}
    assert int(record.expires_at.timestamp()) == answer["expires_at"]


def test_gentoken_with_a_subject(ctl, store):
    status, answer, _ = ctl("gentoken", "--subject", "alice")
    assert status == 0
    assert store.fetch_token(token_digest(answer["access_token"])).subject == "alice"


def test_gentoken_text_output_shows_token_and_expiry(ctl, store):
    status, text, _ = ctl("gentoken", json_output=False)
    token, expiry = text.splitlines()
    assert status == 0 and store.fetch_token(token_digest(token)) is not None
    assert expiry.startswith("expires at ") and expiry.endswith("+00:00")


def test_revoke_one_and_all(ctl, store):
    first, second = new_token(1), new_token(1)
    for _, record in (first, second):
        store.save_token(record)
    revoked = ctl("revoke", first[0])
    assert revoked[:2] == (0, True), revoked[2]
    assert store.fetch_token(first[1].digest).revoked and not store.fetch_token(second[1].digest).revoked
    assert ctl("revoke", "--all")[:2] == (0, True)
    assert store.fetch_token(second[1].digest).revoked


def test_revoke_takes_a_token_starting_with_a_dash_after_double_dash(ctl, store):
    """Tokens made before they stopped starting with "-" live up to twitcher.token_max_hours."""
    token = "-" + "x" * 42
    store.save_token(AccessToken(token_digest(token), utcnow() + timedelta(hours=1)))
    assert ctl("revoke", "--", token)[:2] == (0, True)
    assert store.fetch_token(token_digest(token)).revoked


def test_revoke_unknown_token_is_an_error(ctl):
    status, _, err = ctl("revoke", "never-issued")
    assert status == 1
    one_error_line(err, "no active token")


def test_register_get_list_unregister_clear(ctl, store):
    status, service, _ = ctl("register", WPS_URL, "--name", "emu", "--public", "--no-verify",
                             "--purl", "https://public.example.org/emu")
    assert status == 0
    assert store.fetch_by_name("emu") == Service(name="emu", url=WPS_URL, public=True,
                                                 purl="https://public.example.org/emu", verify=False)
    assert ctl("get", "emu")[1] == service
    ctl("register", "http://other.example.org/wps", "--name", "alpha", "--type", "wms", "--auth", "cert",
        "--ca", "/etc/ssl/ca.pem")
    assert store.fetch_by_name("alpha").verify == "/etc/ssl/ca.pem"
    assert [s["name"] for s in ctl("list")[1]] == ["alpha", "emu"]
    assert ctl("unregister", "emu")[:2] == (0, True)
    assert store.fetch_by_name("emu") is None
    assert ctl("clear")[:2] == (0, True)
    assert store.list_services() == []


def test_text_output_of_list_and_get(ctl):
    ctl("register", WPS_URL, "--name", "emu")
    status, table, _ = ctl("list", json_output=False)
    header, row = table.splitlines()
    assert status == 0 and header.split() == ["NAME", "TYPE", "ACCESS", "URL"]
    assert row.split() == ["emu", "wps", "token", WPS_URL]
    assert "url     " + WPS_URL in ctl("get", "emu", json_output=False)[1]
    ctl("clear")
    assert ctl("list", json_output=False)[1].strip() == "no services registered"


def test_register_without_overwrite_fails_on_a_taken_name(ctl, store):
    ctl("register", WPS_URL, "--name", "emu")
    status, _, err = ctl("register", "http://other.example.org/wps", "--name", "emu", "--no-overwrite")
    assert status == 1
    one_error_line(err, "emu", "registered already")
    assert store.fetch_by_name("emu").url == WPS_URL


def test_server_fault_is_one_line(ctl):
    status, _, err = ctl("register", "ftp://example.org/wps")
    assert status == 1
    one_error_line(err, "http or https", "fault 1")


@pytest.mark.parametrize("command", [("get", "nobody"), ("unregister", "nobody")])
def test_unknown_service_is_an_error(ctl, command):
    status, _, err = ctl(*command)
    assert status == 1
    one_error_line(err, "no service named 'nobody'")


def test_wrong_password_is_one_line_and_changes_nothing(live_twitcher, store, capsys):
    assert main(["-s", live_twitcher, "-p", "guess", "clear"]) == 1
    one_error_line(capsys.readouterr().err, "authentication failed")
    assert main(["-s", live_twitcher, "-u", "root", "-p", ADMIN_PASSWORD, "gentoken"]) == 1
    one_error_line(capsys.readouterr().err, "authentication failed")


def test_password_from_the_environment(live_twitcher, monkeypatch, capsys):
    monkeypatch.setenv("TWITCHER_PASSWORD", ADMIN_PASSWORD)
    assert main(["-s", live_twitcher, "--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_no_password_and_no_terminal_is_a_clear_error(live_twitcher, monkeypatch, capsys):
    monkeypatch.delenv("TWITCHER_PASSWORD", raising=False)
    assert main(["-s", live_twitcher, "list"], stdin=io.StringIO("")) == 1
    one_error_line(capsys.readouterr().err, "no password", "TWITCHER_PASSWORD")


def test_server_down_is_one_line(closed_port_url, capsys):
    assert main(["-s", closed_port_url, "-p", "x", "list"]) == 1
    one_error_line(capsys.readouterr().err, "cannot reach", closed_port_url)


def test_not_an_rpc_server_is_one_line(live_twitcher, capsys):
    assert main(["-s", live_twitcher + "/health", "-p", ADMIN_PASSWORD, "list"]) == 1
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["gentoken", "-H", "soon"],
    ["gentoken", "-e", "NOEQUALS"],
    ["revoke"],
    ["revoke", "tok", "--all"],
    ["register"],
    ["register", "http://x/wps", "--type", "sos"],
    ["register", "http://x/wps", "--verify", "--no-verify"],
    ["-s", "ftp://example.org", "list"],
    ["-s", "http://admin:pw@example.org", "list"],
])
def test_bad_arguments_are_one_line_and_exit_1(argv, capsys):
    assert main(["-p", "x"] + argv) == 1
    one_error_line(capsys.readouterr().err)


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "gentoken" in capsys.readouterr().out


def test_hash_password_reads_stdin_and_needs_no_server(capsys):
    assert main(["-s", "http://127.0.0.1:9", "hash-password"], stdin=io.StringIO("new-secret\n")) == 0
    encoded = capsys.readouterr().out.strip()
    assert encoded.startswith("pbkdf2_sha256$") and verify_password("new-secret", encoded)


def test_hash_password_refuses_an_empty_password(capsys):
    assert main(["hash-password"], stdin=io.StringIO("\n")) == 1
    one_error_line(capsys.readouterr().err, "empty")
