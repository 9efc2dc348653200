"""Two Twitcher processes on one SQLite file behave as one (DESIGN.md §6)."""
from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import xmlrpc.client
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import serve_wsgi, stop_process, wait_until_up

#: Seconds a Twitcher process may take to import, build its app and print its port.
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

#: Runs in the child: build the real app from the JSON settings in argv[1], serve it with
#: waitress on 127.0.0.1 port 0, print the port, serve until terminated.
SERVE = """
import json, sys
from waitress.server import create_server
from twitcher import main
server = create_server(main({}, **json.loads(sys.argv[1])), host="127.0.0.1", port=0, threads=4)
print(server.socket.getsockname()[1], flush=True)
server.run()
"""

EXECUTE = {"service": "WPS", "request": "Execute", "version": "1.0.0", "identifier": "hello"}


@contextlib.contextmanager
def twitcher_process(settings: dict) -> Iterator[str]:
    """A separate Python process serving Twitcher; yields its base URL, terminates it after."""
    process = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(settings)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ))
    try:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        if not ready:
            raise TimeoutError(f"Twitcher process did not start within {START_TIMEOUT} s")
        line = process.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"Twitcher process did not print a port (exit status {process.poll()})")
        base_url = f"http://127.0.0.1:{line}"
        wait_until_up(base_url, "/health")
        yield base_url
    finally:
        stop_process(process, timeout=5)
        process.stdout.close()


@pytest.fixture
def backend() -> Iterator[tuple]:
    """A tiny WSGI 'WPS' that answers every request with a small XML document and records
    the query strings it received."""
    received: List[str] = []

    def wps(environ, start_response):
        received.append(environ.get("QUERY_STRING", ""))
        start_response("200 OK", [("Content-Type", "text/xml")])
        return [b"<?xml version='1.0'?><ExecuteResponse><Status>done</Status></ExecuteResponse>"]

    with serve_wsgi(wps) as url:
        received.clear()  # serve_wsgi's own readiness probe
        yield url + "/wps", received


@pytest.fixture
def two_instances(app_settings) -> Iterator[tuple]:
    """Instances A and B, separate processes, sharing the SQLite file of ``app_settings``."""
    settings = dict(app_settings, **{"twitcher.ows_security": "true", "twitcher.ows_proxy": "true"})
    with twitcher_process(settings) as first, twitcher_process(settings) as second:
        yield first, second


def admin(base_url: str) -> xmlrpc.client.ServerProxy:
    host = base_url.split("//", 1)[1]
    return xmlrpc.client.ServerProxy(f"http://{ADMIN_USER}:{ADMIN_PASSWORD}@{host}/RPC2")


def execute(base_url: str, token: str) -> requests.Response:
    return requests.get(f"{base_url}/ows/proxy/emu", params=dict(EXECUTE, access_token=token),
                        timeout=REQUEST_TIMEOUT)


def test_token_from_one_instance_works_on_the_other_until_revoked_there(two_instances, backend):
    first, second = two_instances
    backend_url, received = backend
    with admin(first) as api_a:
        api_a.register_service(backend_url, {"name": "emu"})
        token = api_a.generate_token(1)["access_token"]

        without = requests.get(f"{second}/ows/proxy/emu", params=EXECUTE, timeout=REQUEST_TIMEOUT)
        assert without.status_code == 401 and received == []

        accepted = execute(second, token)
        assert accepted.status_code == 200, accepted.text
        assert b"<Status>done</Status>" in accepted.content
        assert len(received) == 1 and token not in received[0] and "request=Execute" in received[0]

        assert api_a.revoke_token(token) is True
    rejected = execute(second, token)
    assert rejected.status_code == 401
    assert b"revoked" in rejected.content
    assert len(received) == 1


def test_service_registered_on_one_instance_is_listed_by_the_other(two_instances):
    first, second = two_instances
    with admin(first) as api_a, admin(second) as api_b:
        registered = api_a.register_service("http://wps.example.org/wps", {"name": "shared"})
        assert api_b.get_service_by_name("shared") == registered
        assert api_b.clear_services() is True
        assert api_a.list_services() == []


def test_revoke_all_on_one_instance_rejects_on_the_other(two_instances, backend):
    first, second = two_instances
    backend_url, received = backend
    with admin(second) as api_b, admin(first) as api_a:
        api_b.register_service(backend_url, {"name": "emu"})
        tokens = [api_b.generate_token(1)["access_token"] for _ in range(2)]
        assert [execute(first, t).status_code for t in tokens] == [200, 200]
        assert api_a.revoke_all_tokens() is True
    assert [execute(second, t).status_code for t in tokens] == [401, 401]
    assert len(received) == 2
