"""Two real Twitcher sites on 127.0.0.1, separate SQLite stores and keys, each trusting the other.

Site B proxies to a real recording backend. Each site reaches the other's revocation list
through a relay of its own, so that a test can make a list unreachable without stopping a site.
Waits are bounded polls, never fixed sleeps: a poll interval of 0.2 s and a grace of 3 s.
"""
from __future__ import annotations

import json
import threading
import time
import xmlrpc.client
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import running_twitcher, serve_wsgi
from tests.test_federation import TAMPERED, tampered_token
from twitcher.admin import client
from twitcher.federation.biscuit import public_key_text
from twitcher.federation.keys import write_signing_key
from twitcher.tokens import utcnow

POLL_SECONDS = 0.2
GRACE_SECONDS = 3.0
#: Upper bound for any wait on a poll in these tests.
WAIT_SECONDS = 20.0
EXECUTE = "?service=WPS&request=Execute&version=1.0.0&identifier=hello"


class RecordingBackend:
    """A tiny OWS backend: answers every request with a small XML document, records what it got."""

    def __init__(self):
        self.requests: List[Dict[str, str]] = []

    def __call__(self, environ, start_response):
        self.requests.append({"path": environ.get("PATH_INFO", ""), "query": environ.get("QUERY_STRING", ""),
                              **{k: v for k, v in environ.items() if k.startswith("HTTP_")}})
        start_response("200 OK", [("Content-Type", "text/xml")])
        return [b"<ok/>"]


class Relay:
    """Passes GETs to a site's ``/ows/revoked``, or answers 503 while ``up`` is false."""

    def __init__(self):
        self.target: Optional[str] = None
        self.up = True

    def __call__(self, environ, start_response):
        if not self.up or self.target is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        answer = requests.get(self.target + "/ows/revoked", timeout=5)
        start_response(f"{answer.status_code} X", [("Content-Type", "application/json")])
        return [answer.content]


class Site:
    def __init__(self, name: str, url: str, key, store):
        self.name, self.url, self.key, self.store = name, url, key, store

    def admin(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(f"http://{ADMIN_USER}:{ADMIN_PASSWORD}@{self.url[len('http://'):]}/RPC2")

    def signed(self, **options) -> str:
        return self.admin().generate_token(1, {}, "alice", {"signed": True, **options})["access_token"]

    def get(self, path: str, token: str) -> requests.Response:
        return requests.get(self.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Sites A and B (yielded as a dict with the backend and the relays), stopped after the module."""
    backend = RecordingBackend()
    relays = {"a": Relay(), "b": Relay()}
    folder = tmp_path_factory.mktemp("federation")
    keys = {name: write_signing_key(str(folder / f"{name}.pem")) for name in ("a", "b")}
    with ExitStack() as stack:
        backend_url = stack.enter_context(serve_wsgi(backend))
        relay_urls = {name: stack.enter_context(serve_wsgi(relay)) for name, relay in relays.items()}
        services = [(f"{backend_url}/{service}", {"name": service}) for service in ("emu", "other")]
        sites = {}
        for name, other in (("a", "b"), ("b", "a")):
            settings = {
                "twitcher.signing_key": str(folder / f"{name}.pem"), "twitcher.site_id": f"site-{name}",
                "twitcher.trusted_issuers":
                    f"site-{other} = {public_key_text(keys[other].public_key)} {relay_urls[other]}/ows/revoked",
                "twitcher.revocation_poll_seconds": str(POLL_SECONDS),
                "twitcher.revocation_max_age_seconds": str(GRACE_SECONDS),
                "twitcher.proxy_timeout": "2 10",
            }
            live = stack.enter_context(running_twitcher(folder / name, services, settings=settings))
            relays[name].target = live.url
            sites[name] = Site(name, live.url, keys[name], live.store)
        yield {"a": sites["a"], "b": sites["b"], "backend": backend, "relays": relays}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {WAIT_SECONDS} s")


def test_token_from_a_works_at_b_on_the_allowed_service_only(federation):
    a, b, backend = federation["a"], federation["b"], federation["backend"]
    token = a.signed(services=["emu"])
    seen = len(backend.requests)
    answer = b.get("/ows/proxy/emu" + EXECUTE, token)
    assert answer.status_code == 200 and answer.content == b"<ok/>"
    forwarded = backend.requests[seen]
    assert forwarded["path"] == "/emu"
    assert token not in repr(forwarded) and "HTTP_AUTHORIZATION" not in forwarded
    refused = b.get("/ows/proxy/other" + EXECUTE, token)
    assert refused.status_code == 403 and b"does not allow" in refused.content
    assert len(backend.requests) == seen + 1  # the refused request never reached the backend
    assert a.get("/ows/proxy/emu" + EXECUTE, token).status_code == 200  # and at home


def test_twitcherctl_gentoken_signed_at_a_is_accepted_at_b_for_its_scope(federation):
    a, b = federation["a"], federation["b"]
    out = _run_twitcherctl(["-s", a.url, "-p", ADMIN_PASSWORD, "--json", "gentoken", "--signed", "--subject", "alice",
                            "--service", "emu", "--operation", "execute", "-H", "0.25"])
    token = json.loads(out)["access_token"]
    assert b.get("/ows/proxy/emu" + EXECUTE, token).status_code == 200
    assert b.get("/ows/proxy/emu?service=WPS&request=GetStatus&version=2.0.0&jobid=1", token).status_code == 403
    assert client.main(["-s", a.url, "-p", ADMIN_PASSWORD, "gentoken", "--service", "emu"]) == 1  # needs --signed


def test_token_attenuated_by_the_holder_works_at_b_for_its_narrower_scope_only(federation):
    a, b = federation["a"], federation["b"]
    parent = a.signed()
    out = _run_twitcherctl(["attenuate", parent, "--service", "emu", "--operation", "execute", "--hours", "0.5"])
    child = out.strip()
    assert b.get("/ows/proxy/emu" + EXECUTE, child).status_code == 200
    assert b.get("/ows/proxy/other" + EXECUTE, child).status_code == 403
    # Below the service root there is no operation: only tokens without one pass (fail closed).
    assert b.get("/ows/proxy/emu/outputs/result.nc", child).status_code == 403
    assert b.get("/ows/proxy/emu/outputs/result.nc", parent).status_code == 200
    assert b.get("/ows/proxy/other" + EXECUTE, parent).status_code == 200


def test_token_revoked_at_a_fails_at_b_after_its_next_poll(federation):
    a, b = federation["a"], federation["b"]
    parent = a.signed(services=["emu"])
    child = _run_twitcherctl(["attenuate", parent, "--operation", "execute"]).strip()
    assert b.get("/ows/proxy/emu" + EXECUTE, parent).status_code == 200
    assert b.get("/ows/proxy/emu" + EXECUTE, child).status_code == 200
    assert a.admin().revoke_token(parent) is True
    wait_for(lambda: b.get("/ows/proxy/emu" + EXECUTE, parent).status_code == 401, "refusal at B")
    refused = b.get("/ows/proxy/emu" + EXECUTE, child)
    assert refused.status_code == 401 and b"revoked" in refused.content
    assert a.get("/ows/proxy/emu" + EXECUTE, child).status_code == 401  # at A at once
    assert b.get("/ows/proxy/emu" + EXECUTE, a.signed(services=["emu"])).status_code == 200  # others live on


def test_issuer_list_unreachable_beyond_the_grace_makes_b_refuse_its_tokens(federation):
    a, b, relay = federation["a"], federation["b"], federation["relays"]["a"]
    token_a, token_b = a.signed(), b.signed()
    assert b.get("/ows/proxy/emu" + EXECUTE, token_a).status_code == 200
    relay.up = False
    try:
        wait_for(lambda: b.get("/ows/proxy/emu" + EXECUTE, token_a).status_code == 401, "refusal of A's token")
        assert b.get("/ows/proxy/emu" + EXECUTE, token_b).status_code == 200  # B's own tokens still pass
        assert a.get("/ows/proxy/emu" + EXECUTE, token_a).status_code == 200  # and A's at A
    finally:
        relay.up = True
    wait_for(lambda: b.get("/ows/proxy/emu" + EXECUTE, token_a).status_code == 200, "acceptance after recovery")


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_tampered_token_from_a_is_refused_at_b(federation, kind):
    a, b = federation["a"], federation["b"]
    token = tampered_token(kind, a.key, now=utcnow())
    path = "/ows/proxy/other" if kind.startswith("block appended") else "/ows/proxy/emu"
    answer = b.get(path + EXECUTE, token)
    assert answer.status_code in (401, 403), answer.content
    assert token not in answer.text


def test_revocation_lists_are_published_and_name_their_site(federation):
    for name in ("a", "b"):
        answer = requests.get(federation[name].url + "/ows/revoked", timeout=5)
        assert answer.status_code == 200 and answer.json()["site_id"] == f"site-{name}"


_CLI_LOCK = threading.Lock()


def _run_twitcherctl(argv: List[str]) -> str:
    """Run ``twitcherctl`` in-process (no server, no key) and return what it printed."""
    import contextlib
    import io

    out = io.StringIO()
    with _CLI_LOCK, contextlib.redirect_stdout(out):
        assert client.main(argv) == 0
    return out.getvalue()
