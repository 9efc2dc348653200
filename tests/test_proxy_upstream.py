"""The backend exchange on libcurl (twitcher/proxy/upstream.py), against real servers on 127.0.0.1."""
from __future__ import annotations

import gc
import hashlib
import socket
import threading
import time
import weakref

import pytest

from tests.servers import serve_wsgi
from twitcher.proxy.upstream import (
    RECEIVE_BUFFER,
    STREAM_BUFFER,
    ServiceSlots,
    Upstream,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)

TIMEOUT = (2.0, 5.0)
BLOCK = bytes(range(256)) * 256  # 64 KiB


class Recorder:
    """Answers by path; remembers each request's method, raw path, headers and peer port."""

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.seen.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                          "uri": environ.get("REQUEST_URI") or environ.get("RAW_URI", ""),
                          "port": environ.get("REMOTE_PORT"), "body": body,
                          "headers": {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}})
        path = environ["PATH_INFO"]
        if path == "/large":  # 32 MiB, streamed
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(512 * len(BLOCK)))])
            return iter([BLOCK] * 512)
        if path == "/stall":  # the headers and one block, then silence past the read timeout
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return self._stall()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    @staticmethod
    def _stall():
        yield BLOCK
        time.sleep(2.0)
        yield BLOCK


@pytest.fixture
def recorder():
    app = Recorder()
    with serve_wsgi(app) as base_url:
        app.seen.clear()
        yield app, base_url


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


def _fetch(upstream, url, method="GET", headers=(), body=None, timeout=TIMEOUT):
    exchange = upstream.exchange(method, url, list(headers), body, True, timeout)
    try:
        return exchange.status, b"".join(exchange.chunks())
    finally:
        exchange.close()


def test_keep_alive_connections_are_reused(upstream, recorder):
    app, base_url = recorder
    for _ in range(3):
        assert _fetch(upstream, base_url + "/x") == (200, b"ok")
    assert len({seen["port"] for seen in app.seen}) == 1


def test_libcurl_adds_no_headers_of_its_own(upstream, recorder):
    app, base_url = recorder
    _fetch(upstream, base_url + "/x", headers=[("X-Mine", "1")])
    _fetch(upstream, base_url + "/x", method="POST", body=b"<Execute/>")
    get, post = app.seen
    assert set(get["headers"]) == {"HTTP_HOST", "HTTP_X_MINE"}
    assert set(post["headers"]) == {"HTTP_HOST", "CONTENT_LENGTH"}
    assert post["body"] == b"<Execute/>"


def test_empty_headers_go_out_empty_and_line_breaks_never_go_out(upstream, recorder):
    app, base_url = recorder
    _fetch(upstream, base_url + "/x", headers=[("X-Empty", ""), ("X-Evil", "a\r\nX-Injected: 1"), ("X-Fine", "b")])
    headers = app.seen[0]["headers"]
    assert headers["HTTP_X_EMPTY"] == "" and headers["HTTP_X_FINE"] == "b"
    assert "HTTP_X_INJECTED" not in headers and "HTTP_X_EVIL" not in headers


def test_the_path_goes_out_as_built_without_dot_segment_removal(upstream, recorder):
    app, base_url = recorder
    _fetch(upstream, base_url + "/a/./b/../c?q=1")
    assert app.seen[0]["path"] == "/a/./b/../c"


def test_proxies_from_the_environment_are_ignored(upstream, recorder, monkeypatch):
    """The proxy talks to the registered URL only, never through an http_proxy it inherited."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert _fetch(upstream, recorder[1] + "/x") == (200, b"ok")


def test_a_large_answer_arrives_whole_in_bounded_chunks(upstream, recorder):
    exchange = upstream.exchange("GET", recorder[1] + "/large", [], None, True, TIMEOUT)
    digest, sizes = hashlib.sha256(), []
    for chunk in exchange.chunks():
        digest.update(chunk)
        sizes.append(len(chunk))
    exchange.close()
    assert sum(sizes) == 512 * len(BLOCK)
    assert digest.digest() == hashlib.sha256(BLOCK * 512).digest()
    assert max(sizes) <= STREAM_BUFFER + RECEIVE_BUFFER


def test_a_slow_reader_pauses_the_transfer_instead_of_buffering_it(upstream, recorder):
    exchange = upstream.exchange("GET", recorder[1] + "/large", [], None, True, TIMEOUT)
    chunks = exchange.chunks()
    next(chunks)
    time.sleep(0.3)  # the backend goes on sending; only the socket buffers may fill
    exchange._pump(lambda: False, block=False)
    assert exchange._pending_bytes <= STREAM_BUFFER + RECEIVE_BUFFER
    exchange.close()


def test_silence_past_the_read_timeout_breaks_off_the_stream(upstream, recorder):
    exchange = upstream.exchange("GET", recorder[1] + "/stall", [], None, True, (2.0, 0.5))
    received = 0
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        for chunk in exchange.chunks():
            received += len(chunk)
    exchange.close()
    assert received == len(BLOCK)
    assert time.monotonic() - started < 1.8


def test_an_answer_cut_short_is_broken_not_complete(upstream):
    """Content-Length promises more than arrives before the backend closes the connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve_short():
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)

        thread = threading.Thread(target=serve_short, daemon=True)
        thread.start()
        exchange = upstream.exchange("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/", [], None, True,
                                     TIMEOUT)
        with pytest.raises(UpstreamBroken):
            b"".join(exchange.chunks())
        exchange.close()
        thread.join(timeout=5)


def test_a_closed_port_is_unreachable_at_once(upstream):
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UpstreamUnreachable):
        upstream.exchange("GET", f"http://127.0.0.1:{port}/", [], None, True, TIMEOUT)
    assert time.monotonic() - started < 1.0


def test_an_answer_left_open_is_dropped_when_its_thread_starts_the_next(upstream, recorder):
    app, base_url = recorder
    abandoned = upstream.exchange("GET", base_url + "/large", [], None, True, TIMEOUT)
    next(abandoned.chunks())
    assert _fetch(upstream, base_url + "/x") == (200, b"ok")
    assert app.seen[-1]["path"] == "/x"
    assert app.seen[0]["port"] != app.seen[-1]["port"]  # the half-read connection was not reused


def test_a_streamed_request_body_goes_out_whole(upstream, recorder):
    app, base_url = recorder

    class Sized(list):
        def __len__(self):
            return sum(len(part) for part in self)

    assert _fetch(upstream, base_url + "/x", method="POST", body=Sized([b"a" * 70000, b"b" * 5])) == (200, b"ok")
    assert app.seen[-1]["body"] == b"a" * 70000 + b"b" * 5


def test_a_request_body_of_unknown_length_goes_out_chunked_and_whole(upstream, recorder):
    app, base_url = recorder
    parts = (part for part in [b"a" * 70000, b"", b"b" * 5])
    assert _fetch(upstream, base_url + "/x", method="POST", body=parts) == (200, b"ok")
    assert app.seen[-1]["body"] == b"a" * 70000 + b"b" * 5


def test_a_thread_s_handles_and_connections_go_with_the_thread(upstream, recorder):
    """Servers that start a thread per connection must not pile up libcurl handles."""
    states = []

    def work():
        assert _fetch(upstream, recorder[1] + "/x") == (200, b"ok")
        states.append(weakref.ref(upstream._state()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    gc.collect()
    assert len(states) == 4 and all(state() is None for state in states)


def test_answer_headers_trickled_a_byte_at_a_time_end_at_the_read_timeout(upstream):
    """Each byte resets the silence, so only a total deadline for the headers ends the wait."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(50):  # 5 s at most, then the connection closes
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            upstream.exchange("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/", [], None, True, (2.0, 1.0))
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_service_slots_bound_each_service_apart_and_release_once():
    slots = ServiceSlots(2)
    first, second = slots.acquire("a"), slots.acquire("a")
    assert slots.acquire("a") is None
    other = slots.acquire("b")
    assert other is not None and slots.in_flight("b") == 1
    first.release()
    first.release()  # a second release gives nothing back twice
    assert slots.in_flight("a") == 1
    third = slots.acquire("a")
    assert third is not None and slots.acquire("a") is None
    for slot in (second, third, other):
        slot.release()
    assert slots.in_flight("a") == slots.in_flight("b") == 0


def test_an_exchange_gives_its_slot_back_when_it_ends_or_fails(upstream, recorder):
    slots = ServiceSlots(1)
    exchange = upstream.exchange("GET", recorder[1] + "/ok", [], None, True, TIMEOUT, slots.acquire("svc"))
    assert slots.in_flight("svc") == 1
    exchange.close()
    assert slots.in_flight("svc") == 0
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(UpstreamUnreachable):
        upstream.exchange("GET", f"http://127.0.0.1:{port}/", [], None, True, TIMEOUT, slots.acquire("svc"))
    assert slots.in_flight("svc") == 0
    # an exchange nobody closed is closed by the thread's next one, and its slot with it
    upstream.exchange("GET", recorder[1] + "/ok", [], None, True, TIMEOUT, slots.acquire("svc"))
    assert slots.in_flight("svc") == 1
    upstream.exchange("GET", recorder[1] + "/ok", [], None, True, TIMEOUT).close()
    assert slots.in_flight("svc") == 0


def test_a_request_beyond_the_bound_waits_briefly_for_a_slot_then_is_refused():
    slots = ServiceSlots(1, wait=2.0)
    held = slots.acquire("a")
    threading.Timer(0.1, held.release).start()
    started = time.monotonic()
    taken = slots.acquire("a")  # freed 0.1 s later: taken then, not refused
    assert taken is not None and 0.05 < time.monotonic() - started < 1.5
    quick = ServiceSlots(1, wait=0.2)
    kept = quick.acquire("a")
    started = time.monotonic()
    assert quick.acquire("a") is None and 0.15 < time.monotonic() - started < 1.5
    assert quick.acquire("b") is not None  # other services do not wait behind it
    for slot in (taken, kept):
        slot.release()


def test_each_release_hands_its_slot_to_one_waiter_of_its_own_service():
    slots = ServiceSlots(1, wait=5.0)
    held, other = slots.acquire("a"), slots.acquire("b")
    served, done = [], threading.Event()

    def waiter(number: int) -> None:
        slot = slots.acquire("a")
        served.append((number, slot is not None))
        time.sleep(0.02)
        if slot is not None:
            slot.release()
        if len(served) == 3:
            done.set()

    threads = [threading.Thread(target=waiter, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    other.release()  # another service's release wakes none of them
    time.sleep(0.1)
    assert served == [] and slots.in_flight("a") == 1
    started = time.monotonic()
    held.release()  # one slot, passed on from waiter to waiter: no wake-up is lost
    assert done.wait(4) and all(ok for _, ok in served)
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(2)
    assert slots.in_flight("a") == 0


def test_refusals_are_reported_once_per_interval_with_their_count(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("twitcher.proxy.upstream.time.monotonic", lambda: clock[0])
    slots = ServiceSlots(1, wait=0)
    held = slots.acquire("a")
    assert slots.acquire("a") is None and slots.acquire("a") is None
    assert slots.refusals_to_report("a") == 2  # the first report comes at once
    assert slots.acquire("a") is None
    assert slots.refusals_to_report("a") == 0  # then at most one per interval
    clock[0] += 11
    assert slots.refusals_to_report("a") == 1 and slots.refusals_to_report("b") == 0
    held.release()
