"""The production server of ``pserve production.ini``: granian, several processes with threads.

``[server:main] use = egg:twitcher#granian`` makes ``pserve`` call :func:`serve_granian` with the
keys of that section. Why granian: it is a Rust HTTP server shipped as wheels (no compiler at
install, unlike uWSGI), it runs a WSGI application on real threads of its own in each worker
process (Twitcher's libcurl exchanges block a thread while they wait: greenlets would stall),
its master restarts a worker that died and stops workers gracefully on SIGTERM, and in ``make
bench`` it kept about the same share of the backend's rate as uWSGI, at about a tenth more CPU
per request (docs/benchmark.rst has the numbers).

Each worker is a *spawned* process (a fresh interpreter, not a fork of ``pserve``) that builds
the application from the ini file itself: nothing ``pserve`` created (libcurl handles, store
connections, prometheus-client's choice of single- or multi-process values) crosses into a
worker. The application ``pserve`` loaded is only used to check the configuration before the
port is bound, and to see whether metrics are on.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from typing import Optional, Tuple

log = logging.getLogger(__name__)

#: Seconds a worker has after SIGTERM to finish the requests it is serving.
DEFAULT_GRACEFUL_TIMEOUT = 30
DEFAULT_THREADS = 8
#: Connections a worker keeps open at once, idle keep-alive ones included (granian's backpressure).
DEFAULT_CONNECTIONS = 1024
DEFAULT_LISTEN = "127.0.0.1:8000"
#: Overrides ``listen`` of ``[server:main]`` (containers, tests): ``host:port``.
LISTEN_VARIABLE = "TWITCHER_LISTEN"
#: The variable prometheus-client reads to share its values between processes.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_listen(listen: str) -> Tuple[str, int]:
    """``host:port`` (``[::1]:8000`` for IPv6) as a pair; a bad value names the key."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"[server:main] listen: expected host:port, got {listen!r}")
    return host, int(port)


def _positive(key: str, value, default: int) -> int:
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"[server:main] {key}: expected a positive whole number, got {value!r}")
    return number


def load_worker_app(ini_path: str, target: Optional[str] = None):
    """Build the application in a worker: logging and ``[app:main]`` from ``ini_path``.

    ``target`` is what granian passes (its target string); the ini path is what counts.
    """
    from ..wsgi import load

    return load(ini_path)


def prepare_multiproc_dir(metrics_on: bool) -> Optional[str]:
    """Give the workers a fresh prometheus-client directory when metrics are on.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used (and emptied: files of an earlier run
    would add their counts to this one's); otherwise a temporary directory is made and removed
    at exit. Returns the directory to remove at exit, if any.
    """
    if not metrics_on:
        return None
    given = os.environ.get(MULTIPROC_VARIABLE)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return None
    made = tempfile.mkdtemp(prefix="twitcher-metrics-")
    os.environ[MULTIPROC_VARIABLE] = made
    return made


def serve_granian(wsgi_app, global_conf, listen: str = DEFAULT_LISTEN, workers=None, threads=None,
                  graceful_timeout=None, backlog=None, connections=None, **unknown) -> None:
    """The ``paste.server_runner`` ``twitcher#granian``: serve the ini's application until SIGTERM.

    Keys of ``[server:main]``: ``listen`` (host:port; the environment variable ``TWITCHER_LISTEN``
    overrides it), ``workers`` (default: one per core),
    ``threads`` per worker (default 8), ``graceful_timeout`` (seconds a stopping worker has to
    finish its requests, default 30), ``backlog`` (default 1024), ``connections`` a worker keeps
    open at once (default 1024).
    """
    if unknown:
        raise ValueError(f"[server:main]: unknown key {sorted(unknown)[0]!r} for egg:twitcher#granian "
                         "(see docs/deployment.rst)")
    try:
        from granian.constants import Interfaces
        from granian.server import Server
    except ImportError:
        raise SystemExit("egg:twitcher#granian needs granian: pip install 'twitcher[prod]'") from None
    host, port = parse_listen(os.environ.get(LISTEN_VARIABLE) or listen)
    n_workers = _positive("workers", workers, default_workers())
    n_threads = _positive("threads", threads, DEFAULT_THREADS)
    timeout = _positive("graceful_timeout", graceful_timeout, DEFAULT_GRACEFUL_TIMEOUT)
    n_backlog = _positive("backlog", backlog, 1024)
    n_connections = _positive("connections", connections, DEFAULT_CONNECTIONS)
    ini_path = os.path.abspath(global_conf["__file__"])

    settings = getattr(getattr(wsgi_app, "registry", None), "twitcher", None)
    made_dir = prepare_multiproc_dir(bool(getattr(settings, "metrics", False)))
    # A fresh interpreter per worker (see the module docstring); 'fork' is Linux' default.
    multiprocessing.set_start_method("spawn", force=True)
    server = Server(
        "twitcher.wsgi:application",  # only a name for granian's process title: load_worker_app builds it
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=n_workers,
        blocking_threads=n_threads,
        # granian's backpressure counts accepted *connections*, idle keep-alive ones included, not
        # requests: bounded by the threads, it let a few keep-alive clients (nginx, a portal, the
        # soak's 64) starve everyone else until their 30 s timeouts. Requests beyond the threads
        # wait in granian's queue for one; the per-service bound keeps a stuck backend from
        # holding them all.
        backpressure=n_connections,
        backlog=n_backlog,
        respawn_failed_workers=True,
        workers_kill_timeout=timeout,
        log_access=False,  # Twitcher's own access log (twitcher.access_log) knows what was decided
    )
    log.info("serving %s on http://%s:%s with %d workers of %d threads", ini_path, host, port, n_workers, n_threads)
    try:
        server.serve(target_loader=_Loader(ini_path))
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)


class _Loader:
    """granian's target loader, picklable for spawned workers: builds the app from the ini file."""

    def __init__(self, ini_path: str) -> None:
        self.ini_path = ini_path

    def __call__(self, target: str):
        return load_worker_app(self.ini_path, target)
