"""Real HTTP servers on 127.0.0.1 for end-to-end tests: waitress in a thread, ephemeral ports."""
from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import Callable, Dict, Iterator

import requests
from waitress import wasyncore
from waitress.server import create_server

#: Seconds a test waits for a server to answer before it gives up.
START_TIMEOUT = 10.0


@contextlib.contextmanager
def serve_wsgi(app: Callable, threads: int = 8, **options) -> Iterator[str]:
    """Serve ``app`` with waitress on 127.0.0.1 (a free port); yield its base URL.

    The server is stopped when the block ends, even when the test failed.
    """
    server = create_server(app, host="127.0.0.1", port=0, threads=threads, clear_untrusted_proxy_headers=True,
                           **options)
    host, port = server.socket.getsockname()[:2]
    thread = threading.Thread(target=server.run, name=f"waitress-{port}", daemon=True)
    thread.start()
    base_url = f"http://{host}:{port}"
    try:
        wait_until_up(base_url)
        yield base_url
    finally:
        # server.close() alone leaves keep-alive connections (xmlrpc.client, OWSLib) open, and
        # waitress' loop runs until its map is empty: close everything, from the loop's own thread.
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        except OSError:
            # The loop was already awake (a finished task pulled the trigger), ran our queued
            # thunk before our own wake-up write, and closed the trigger with everything else.
            pass
        thread.join(timeout=5)
        server.task_dispatcher.shutdown()


class LateApp:
    """A WSGI app built after its server is bound, because ``twitcher.url`` must name the port.

    Twitcher (and PyWPS behind it) writes that URL into rewritten links, status locations and
    output references, so it has to be the address the client really uses. Until the app is
    set, the server answers 503.
    """

    def __init__(self) -> None:
        self.app = None

    def __call__(self, environ, start_response):
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting"]
        return self.app(environ, start_response)


@contextlib.contextmanager
def serve_twitcher(settings: Dict[str, str]) -> Iterator[str]:
    """Serve a real Twitcher (``main()``) on 127.0.0.1 whose ``twitcher.url`` is its own address."""
    from twitcher import main

    late = LateApp()
    with serve_wsgi(late) as base_url:
        late.app = main({}, **{**settings, "twitcher.url": base_url})
        try:
            yield base_url
        finally:
            # Let backends' servers stop at once instead of waiting for pooled keep-alive connections.
            upstream = getattr(late.app.registry, "upstream", None)
            if upstream is not None:
                upstream.close()
            # A site that checked signed tokens polls other sites' revocation lists: stop it, or it
            # would go on polling closed servers for the rest of the test session.
            federation = getattr(late.app.registry, "federation", None)
            if federation is not None:
                federation.revocations.stop()


def wait_until_up(base_url: str, path: str = "/", timeout: float = START_TIMEOUT) -> None:
    """Poll ``base_url + path`` until anything answers (any status), bounded by ``timeout``."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            try:
                requests.get(base_url + path, timeout=1)
                return
            except requests.ConnectionError:
                deadline.wait(0.05)
        raise TimeoutError(f"nothing answered at {base_url} within {timeout} s")
    finally:
        timer.cancel()


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
