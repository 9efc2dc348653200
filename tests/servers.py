"""Real HTTP servers on 127.0.0.1 for end-to-end tests: waitress in a thread, ephemeral ports."""
from __future__ import annotations

import contextlib
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import requests
from waitress import wasyncore
from waitress.server import create_server

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from twitcher.services import service_from_registration
from twitcher.store import Store, open_store
from twitcher.tokens import new_token

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


@dataclass(frozen=True)
class RunningTwitcher:
    """A Twitcher served by :func:`running_twitcher`, and the store it reads."""

    #: Its base URL, also its ``twitcher.url``.
    url: str
    #: A connection of the test's own to the same SQLite file: what it saves, Twitcher reads.
    store: Store
    #: The settings it was built from (without ``twitcher.url``), for a second one on the same store.
    settings: Mapping[str, str]

    def proxy(self, name: str) -> str:
        """The proxy URL of the registered service ``name``."""
        return f"{self.url}/ows/proxy/{name}"

    def token(self, **options) -> str:
        """A new opaque token valid for an hour, saved in the store; ``options`` go to ``new_token``."""
        token, record = new_token(1, **options)
        self.store.save_token(record)
        return token

    def another(self, settings: Mapping[str, str]) -> contextlib.AbstractContextManager:
        """A second Twitcher on the same store with ``settings`` changed; yields its base URL."""
        return serve_twitcher({**self.settings, **settings})


@contextlib.contextmanager
def service_store(folder: Path, services: Sequence[Tuple[str, dict]] = ()) -> Iterator[Store]:
    """A new SQLite store, ``folder/twitcher.sqlite``, with ``services`` registered; closed after.

    ``services`` are ``(url, registration)`` pairs, as ``register_service`` takes them. Twitcher
    reaches the same file at ``sqlite:///`` + the store's ``path``.
    """
    store = open_store(f"sqlite:///{folder}/twitcher.sqlite")
    try:
        for url, registration in services:
            store.save_service(service_from_registration(url, registration))
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def running_twitcher(folder: Path, services: Sequence[Tuple[str, dict]] = (),
                     settings: Optional[Mapping[str, str]] = None) -> Iterator[RunningTwitcher]:
    """A real Twitcher on a :func:`service_store` in ``folder``, served by :func:`serve_twitcher`.

    ``settings`` add to (or replace) the store URL and the admin credentials of ``tests.conftest``.
    """
    with service_store(folder, services) as store:
        full = {"twitcher.db_url": f"sqlite:///{store.path}", "twitcher.username": ADMIN_USER,
                "twitcher.password": ADMIN_PASSWORD, **(settings or {})}
        with serve_twitcher(full) as base_url:
            yield RunningTwitcher(base_url, store, full)


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
