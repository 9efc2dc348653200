"""The CPU of one request with Twitcher's WSGI application called in-process, by 1 or more threads.

No server, no load generator: what is left is the application's own work, and what threads of
one process cost each other. ``make bench`` measures what operators run; this tells where the
difference comes from (``docs/benchmark.rst``, "Where the time still goes"). The fake backend runs
under gunicorn in its own process, so that its CPU is not counted.

    python -m bench.inprocess                       # the Python plane, 1, 2 and 8 threads
    python -m bench.inprocess --plane nginx         # the nginx plane's hand-offs and verify answers
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.scenarios import (  # noqa: E402
    GET_CAPABILITIES,
    GET_EXECUTE,
    GET_EXECUTE_RAW,
    GET_MAP,
    POST_EXECUTE,
    SERVICE_NAME,
    WMS_SERVICE_NAME,
    register,
)
from bench.servers import clean_env, fake_backend  # noqa: E402

FRONT_SECRET = "bench-front-secret-" + "x" * 24
Environ = Callable[[], dict]


def _environ(method: str, path: str, query: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> dict:
    """A WSGI environ as a server builds it for what wrk sends."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    if body:
        environ.update({"CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "text/xml"})
    environ.update(headers or {})
    return environ


def cases(plane: str, token: str, prefix: str = "/ows") -> Dict[str, Environ]:
    """The request types of ``make bench``, as the application receives them in ``plane``."""
    wps, wms = f"{prefix}/proxy/{SERVICE_NAME}", f"{prefix}/proxy/{WMS_SERVICE_NAME}"
    with_token = f"&access_token={token}"
    if plane == "python":
        return {
            "getcaps": lambda: _environ("GET", wps, GET_CAPABILITIES[1:]),
            "execute_get": lambda: _environ("GET", wps, GET_EXECUTE[1:] + with_token),
            "execute_post": lambda: _environ("POST", wps, "", POST_EXECUTE, {"HTTP_AUTHORIZATION": f"Bearer {token}"}),
            "rejected": lambda: _environ("GET", wps, GET_EXECUTE[1:]),
            "execute_raw": lambda: _environ("GET", wps, GET_EXECUTE_RAW[1:] + with_token),
            "getmap": lambda: _environ("GET", wms, GET_MAP[1:] + with_token),
        }
    front = {"HTTP_X_TWITCHER_FRONT": FRONT_SECRET}
    original = {**front, "HTTP_X_ORIGINAL_METHOD": "GET"}
    return {
        "handoff_getmap": lambda: _environ("GET", wms, GET_MAP[1:] + with_token, headers=front),
        "handoff_execute_raw": lambda: _environ("GET", wps, GET_EXECUTE_RAW[1:] + with_token, headers=front),
        "verify_getmap": lambda: _environ("GET", f"{prefix}/verify/{WMS_SERVICE_NAME}", "", headers={
            **original, "HTTP_X_ORIGINAL_URI": f"{wms}?{GET_MAP[1:]}{with_token}"}),
    }


def call(app, make: Environ) -> str:
    """One request through the application, its answer read to the end; its status line."""
    status = []
    result = app(make(), lambda line, headers, exc_info=None: status.append(line))
    try:
        for _ in result:
            pass
    finally:
        if hasattr(result, "close"):
            result.close()
    return status[0]


def cpu_per_request(app, make: Environ, requests: int, threads: int) -> dict:
    """CPU ms per request (the whole process) and requests per second, ``threads`` calling at once."""
    per_thread = max(1, requests // threads)

    def work() -> None:
        for _ in range(per_thread):
            call(app, make)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    cpu, wall = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_thread * threads
    return {"cpu_ms": 1000 * cpu / done, "rps": done / wall}


def build_app(plane: str, workdir: Path, backend_url: str):
    """Twitcher as production.ini configures it (SQLite file store), the two bench services, a token."""
    import twitcher

    settings = {"twitcher.url": "http://127.0.0.1:8000", "twitcher.db_url": f"sqlite:///{workdir}/twitcher.sqlite",
                "twitcher.password": "bench-admin-password", "twitcher.wps": "false"}
    if plane == "nginx":
        settings.update({"twitcher.data_plane": "nginx", "twitcher.front_secret": FRONT_SECRET})
    app = twitcher.main({}, **settings)
    return app, register(app.registry.store, backend_url)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plane", choices=("python", "nginx"), default="python")
    parser.add_argument("--threads", default="1,2,8", help="thread counts, comma-separated (default 1,2,8)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement (default 3000)")
    parser.add_argument("--only", default="", help="request types, comma-separated (default: all of the plane)")
    args = parser.parse_args(argv)
    thread_counts = [int(n) for n in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="twitcher-inprocess-") as tmp:
        workdir = Path(tmp)
        backend = fake_backend(workdir, clean_env(), workers=1, threads=8)
        try:
            backend.wait_until_serving()
            app, token = build_app(args.plane, workdir, backend.base_url)
            print("| request | status | " + " | ".join(f"{n} thr. CPU ms/req, req/s" for n in thread_counts) + " |")
            print("|---|---|" + "---:|" * len(thread_counts))
            for name, make in cases(args.plane, token).items():
                if args.only and name not in args.only.split(","):
                    continue
                for _ in range(200):  # warm-up: caches, the store's connection, libcurl's pool
                    status = call(app, make)
                cells = []
                for threads in thread_counts:
                    measured = cpu_per_request(app, make, args.requests, threads)
                    cells.append(f"{measured['cpu_ms']:.3f}, {measured['rps']:.0f}")
                print(f"| {name} | {status} | " + " | ".join(cells) + " |", flush=True)
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
