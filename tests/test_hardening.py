"""Issue 12: no slow backend stalls Twitcher, no answer names the backend, no token leaks.

Real servers on 127.0.0.1 throughout: Twitcher served by waitress, backends that are plain
sockets misbehaving on purpose (never answering, trickling, streaming for ever), and a WSGI
backend that records what reached it.
"""
from __future__ import annotations

import configparser
import contextlib
import socket
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
import requests
from lxml import etree

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import LateApp, serve_wsgi
from twitcher import main
from twitcher.services import service_from_registration

OWS = "{http://www.opengis.net/ows/1.1}"
ROOT = Path(__file__).resolve().parent.parent


# --- misbehaving backends ---------------------------------------------------------------------------

class SocketBackend:
    """A raw TCP backend on 127.0.0.1: ``behave(conn)`` runs for each connection in a thread.

    ``close()`` closes the listening socket and every connection, which ends whatever
    Twitcher still waits for (its exchanges then fail at once).
    """

    def __init__(self, behave: Callable[[socket.socket, SocketBackend], None]) -> None:
        self.behave = behave
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: List[socket.socket] = []
        self.closed = threading.Event()
        self.peer_gone = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.closed.is_set():
                conn.close()
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.behave(conn, self)
        except OSError:
            self.peer_gone.set()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def _read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            raise OSError("the client went away")
        data += piece
    return data


def never_answer(conn, backend) -> None:
    _read_request_head(conn)
    backend.closed.wait(60)


def trickle_document(conn, backend) -> None:
    """An XML document whose headers come at once, then a byte every 0.2 s (for at most 20 s)."""
    _read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 200\r\n\r\n<r>")
    for _ in range(100):
        if backend.closed.wait(0.2):
            return
        conn.sendall(b" ")


def stream_for_ever(conn, backend) -> None:
    """An endless octet stream; ``peer_gone`` is set once Twitcher drops the connection."""
    _read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    block = b"\x00" * 65536
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not backend.closed.is_set():
        conn.sendall(block)
    conn.close()


@contextlib.contextmanager
def socket_backend(behave) -> Iterator[SocketBackend]:
    backend = SocketBackend(behave)
    try:
        yield backend
    finally:
        backend.close()


@contextlib.contextmanager
def live_twitcher(app_settings, threads: int = 4, **settings) -> Iterator[tuple]:
    """A real Twitcher served by waitress with ``threads`` workers; yields (base URL, registry)."""
    late = LateApp()
    with serve_wsgi(late, threads=threads) as base_url:
        late.app = main({}, **{**app_settings, **{f"twitcher.{k}": str(v) for k, v in settings.items()},
                               "twitcher.url": base_url})
        try:
            yield base_url, late.app.registry
        finally:
            late.app.registry.upstream.close()


def _register(app_settings, name: str, url: str, **data) -> None:
    from twitcher.store import open_store
    store = open_store(app_settings["twitcher.db_url"])
    try:
        store.save_service(service_from_registration(url, {"name": name, **data}))
    finally:
        store.close()


def _raw_get(base_url: str, path: str) -> socket.socket:
    """Send a GET and return the socket without reading the answer."""
    host, port = base_url[len("http://"):].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    sock.close()
    return data


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _report(body: bytes) -> etree._Element:
    return etree.fromstring(body).find(f"{OWS}Exception")


# --- 1. availability --------------------------------------------------------------------------------

def test_a_document_trickled_for_rewriting_is_504_at_the_rewrite_timeout(make_app, store):
    """Each byte comes well within the read timeout, so only a total deadline can end it."""
    with socket_backend(trickle_document) as backend:
        store.save_service(service_from_registration(backend.url + "/wps", {"name": "slow", "public": True}))
        app = make_app(rewrite_timeout="1", proxy_timeout="2 10")
        started = time.monotonic()
        answer = app.get("/ows/proxy/slow?service=WPS&request=GetCapabilities", status=504)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 5
    assert _report(answer.body).get("exceptionCode") == "NoApplicableCode"
    assert app.app.registry.service_slots.in_flight("slow") == 0


def test_beyond_the_bound_a_service_answers_503_with_retry_after_and_no_slot_leaks(app_settings):
    with socket_backend(never_answer) as hung, \
            live_twitcher(app_settings, threads=6, max_inflight_per_service=2, proxy_timeout="2 30") as (url, reg):
        _register(app_settings, "hung", hung.url + "/wps", public=True)
        path = "/ows/proxy/hung?service=WPS&request=GetCapabilities"
        held = [_raw_get(url, path) for _ in range(2)]
        assert _wait_for(lambda: reg.service_slots.in_flight("hung") == 2)
        started = time.monotonic()
        refused = requests.get(url + path, timeout=10)
        assert time.monotonic() - started < 2
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert _report(refused.content).get("exceptionCode") == "NoApplicableCode"
        hung.close()  # the backend goes away: the held exchanges end with 502
        answers = [_read_all(sock) for sock in held]
        assert all(a.startswith(b"HTTP/1.1 502") for a in answers), answers
        assert _wait_for(lambda: reg.service_slots.in_flight("hung") == 0)
        # an unreachable backend (closed port) gives its slot back too
        for _ in range(3):
            assert requests.get(url + path, timeout=10).status_code == 502
        assert reg.service_slots.in_flight("hung") == 0


def test_a_client_that_goes_away_ends_the_backend_exchange_and_frees_its_slot(app_settings):
    with socket_backend(stream_for_ever) as backend, \
            live_twitcher(app_settings, threads=4, max_inflight_per_service=2) as (url, reg):
        _register(app_settings, "stream", backend.url + "/data", public=True)
        sock = _raw_get(url, "/ows/proxy/stream/file.bin")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert reg.service_slots.in_flight("stream") == 1
        sock.close()
        assert backend.peer_gone.wait(20), "the backend connection was not dropped"
        assert _wait_for(lambda: reg.service_slots.in_flight("stream") == 0)


def _timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_health_and_admin_api_answer_while_a_service_hangs_with_twice_the_threads_of_requests(app_settings):
    threads = 4
    with socket_backend(never_answer) as hung, \
            live_twitcher(app_settings, threads=threads, max_inflight_per_service=2,
                          proxy_timeout="2 30") as (url, reg):
        _register(app_settings, "hung", hung.url + "/wps", public=True)
        path = "/ows/proxy/hung?service=WPS&request=GetCapabilities"
        hanging = [_raw_get(url, path) for _ in range(2 * threads)]
        assert _wait_for(lambda: reg.service_slots.in_flight("hung") == 2)
        admin = xmlrpc.client.ServerProxy(url.replace("://", f"://{ADMIN_USER}:{ADMIN_PASSWORD}@") + "/RPC2")
        for _ in range(3):
            assert _timed(lambda: requests.get(url + "/health", timeout=5).raise_for_status()) < 2
            assert _timed(admin.list_services) < 2
        hung.close()
        answers = [_read_all(sock) for sock in hanging]
        statuses = sorted(a.split(b" ", 2)[1] for a in answers)
        assert statuses == [b"502"] * 2 + [b"503"] * (2 * threads - 2)
        assert _wait_for(lambda: reg.service_slots.in_flight("hung") == 0)


# --- 6. body limits of the server in the shipped ini files -----------------------------------------

def _server_options(ini: str) -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / ini)
    server = parser["server:main"]
    return {"max_request_body_size": int(server["max_request_body_size"]),
            "inbuf_overflow": int(server["inbuf_overflow"])}


def _app_limit(ini: str) -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / ini)
    return int(parser["app:main"]["twitcher.max_request_body"])


# production.ini serves with granian (twitcher/ops/runner.py), whose limits tests/test_ops_runner.py checks.
@pytest.mark.parametrize("ini", ["development.ini"])
def test_the_server_limit_sits_just_above_the_application_limit(ini):
    options, limit = _server_options(ini), _app_limit(ini)
    # above: a body just over the application's limit gets the application's ExceptionReport;
    # close above: nobody can make the server spool much more than the application would take.
    assert limit < options["max_request_body_size"] <= limit + 2 * 1024 * 1024
    assert options["inbuf_overflow"] <= 1024 * 1024


def _post_head(base_url: str, path: str, length: int, extra: str = "") -> socket.socket:
    host, port = base_url[len("http://"):].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/xml\r\n"
                 f"Content-Length: {length}\r\n{extra}\r\n".encode())
    return sock


@pytest.mark.parametrize("ini", ["development.ini"])
@pytest.mark.parametrize("path", ["/RPC2", "/ows/proxy/any"])
def test_a_huge_declared_body_is_refused_before_it_is_sent(app_settings, ini, path):
    late = LateApp()
    with serve_wsgi(late, threads=2, **_server_options(ini)) as url:
        late.app = main({}, **{**app_settings, "twitcher.url": url})
        sock = _post_head(url, path, 10 ** 12)
        started = time.monotonic()
        head = sock.recv(4096)  # nothing of the body was sent
        sock.close()
    assert time.monotonic() - started < 2
    assert head.startswith(b"HTTP/1.1 413")


def test_a_body_just_over_the_application_limit_gets_its_exception_report(app_settings):
    limit = _app_limit("development.ini")
    late = LateApp()
    with serve_wsgi(late, threads=2, **_server_options("development.ini")) as url:
        late.app = main({}, **{**app_settings, "twitcher.url": url, "twitcher.max_request_body": str(limit)})
        _register(app_settings, "svc", "http://127.0.0.1:9/wps")
        answer = requests.post(url + "/ows/proxy/svc", data=b"<x/>" + b" " * limit,
                               headers={"Content-Type": "text/xml"}, timeout=30)
    assert answer.status_code == 413
    assert _report(answer.content).get("exceptionCode") == "NoApplicableCode"


# --- 3, 4, 5. what reaches the backend, and what caches may keep ----------------------------------

class Recorder:
    """A real WSGI backend that records every request and answers with caching headers."""

    def __init__(self) -> None:
        self.seen: List[dict] = []
        self.cache_control = "public, max-age=60, s-maxage=600"

    def __call__(self, environ, start_response):
        self.seen.append({"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
                          "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
                          # waitress applies the trusted X-Forwarded-Host/-Proto to these two
                          "forwarded_host": environ["HTTP_HOST"], "forwarded_proto": environ["wsgi.url_scheme"]})
        headers = [("Content-Type", "text/plain"), ("Content-Length", "2"), ("Vary", "Accept-Language")]
        if self.cache_control:
            headers.append(("Cache-Control", self.cache_control))
        start_response("200 OK", headers)
        return [b"ok"]


@pytest.fixture
def recorded(make_app, store):
    """(Twitcher with the security tween, the recording backend, a valid token)."""
    from twitcher.tokens import new_token as make_token

    recorder = Recorder()
    # waitress would drop the X-Forwarded-* headers of an untrusted peer: trust Twitcher's.
    with serve_wsgi(recorder, trusted_proxy="127.0.0.1",
                    trusted_proxy_headers={"x-forwarded-host", "x-forwarded-proto", "x-forwarded-for"}) as base_url:
        recorder.seen.clear()
        store.save_service(service_from_registration(base_url + "/wps?map=/srv/a.map", {"name": "svc"}))
        clear, record = make_token(1)
        store.save_token(record)
        yield make_app(), recorder, clear


def _everything_sent(seen: dict) -> str:
    return " ".join([seen["path"], seen["query"], *seen["headers"].values()])


def test_the_token_reaches_the_backend_in_no_header_referer_included(recorded):
    app, recorder, token = recorded
    app.get("/ows/proxy/svc/outputs/a.nc", headers={
        "Authorization": f"Bearer {token}",
        "Referer": f"http://localhost/ows/proxy/svc?service=WPS&access_token={token}",
        "X-Debug": f"copy {token}", "Origin": "http://portal.example", "Accept-Language": "de"})
    app.get(f"/ows/proxy/svc/outputs/b.nc?access_token={token}",
            headers={"Referer": f"http://portal.example/view/{token}/page"})
    app.get(f"/ows/proxy/svc/outputs/c.nc?access_token={token}",
            headers={"Referer": "http://portal.example/view?Token=someone-elses"})
    assert len(recorder.seen) == 3
    for seen in recorder.seen:
        assert token not in _everything_sent(seen)
        assert "HTTP_REFERER" not in seen["headers"]
    assert recorder.seen[0]["headers"]["HTTP_ACCEPT_LANGUAGE"] == "de"
    assert recorder.seen[0]["headers"]["HTTP_ORIGIN"] == "http://portal.example"


def test_forwarding_headers_name_the_public_url_never_the_client_host(recorded):
    app, recorder, token = recorded
    app.get("/ows/proxy/svc?service=WPS&request=GetCapabilities", headers={"Host": "evil.example"})
    seen = recorder.seen[0]
    assert (seen["forwarded_host"], seen["forwarded_proto"]) == ("localhost", "http")


def test_a_referer_without_a_token_passes(recorded):
    app, recorder, token = recorded
    app.get("/ows/proxy/svc/outputs/a.nc", headers={"Access-Token": token, "Referer": "http://portal.example/p?x=1"})
    assert recorder.seen[0]["headers"]["HTTP_REFERER"] == "http://portal.example/p?x=1"


@pytest.mark.parametrize("path", ["/ows/proxy/svc/{t}/outputs/a.nc", "/ows/proxy/svc/outputs/{t}",
                                  "/ows/proxy/svc/{t}/", "/ows/proxy/svc/x/{encoded}"])
def test_the_presented_token_as_an_extra_path_segment_is_refused_and_never_forwarded(recorded, path):
    app, recorder, token = recorded
    encoded = "".join(f"%{ord(c):02X}" for c in token)
    answer = app.get(path.format(t=token, encoded=encoded), headers={"Access-Token": token}, status=400)
    exception = _report(answer.body)
    assert (exception.get("exceptionCode"), exception.get("locator")) == ("InvalidParameterValue", "extra_path")
    assert recorder.seen == []


def test_the_legacy_token_path_still_reaches_the_service_root_without_the_token(recorded):
    app, recorder, token = recorded
    app.get(f"/ows/proxy/svc/{token}?service=WPS&request=Execute&identifier=x")
    assert recorder.seen[0]["path"] == "/wps"
    assert token not in _everything_sent(recorder.seen[0])


@pytest.mark.parametrize("query", ["map=/etc/passwd", "MAP=/etc/passwd", "%6Dap=/etc/passwd", "map=/srv/a.map",
                                   "Map=x&map=y"])
def test_a_client_cannot_add_a_value_for_a_key_the_registered_url_fixes(recorded, query):
    app, recorder, token = recorded
    app.get(f"/ows/proxy/svc?service=WPS&request=GetCapabilities&{query}")
    assert recorder.seen[0]["query"] == "map=/srv/a.map&service=WPS&request=GetCapabilities"


def test_answers_to_protected_requests_are_private_and_vary_on_the_token_headers(recorded):
    app, recorder, token = recorded
    answer = app.get("/ows/proxy/svc?service=WPS&request=Execute&identifier=x", headers={"Access-Token": token})
    assert answer.headers["Cache-Control"] == "private, max-age=60"
    assert [v.strip() for v in answer.headers["Vary"].split(",")] == ["Accept-Language", "Authorization",
                                                                      "Access-Token"]
    recorder.cache_control = "no-store"
    answer = app.get("/ows/proxy/svc/outputs/a.nc", headers={"Authorization": f"Bearer {token}"})
    assert answer.headers["Cache-Control"] == "private, no-store"
    recorder.cache_control = None
    answer = app.head(f"/ows/proxy/svc/outputs/a.nc?access_token={token}")
    assert answer.headers["Cache-Control"] == "private"
    assert "Access-Token" in answer.headers["Vary"]


def test_answers_to_public_requests_keep_the_backend_caching_headers(recorded):
    app, recorder, token = recorded
    answer = app.get("/ows/proxy/svc?service=WPS&request=GetCapabilities")
    assert answer.headers["Cache-Control"] == "public, max-age=60, s-maxage=600"
    assert answer.headers["Vary"] == "Accept-Language"
