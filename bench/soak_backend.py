"""The soak test's backend: the benchmark's fake WPS (:mod:`bench.backend`) that writes down every
request it receives, so that the soak driver can prove no request without a valid token got here.

Twitcher strips tokens before forwarding, so the backend cannot tell by itself whether a request
carried one. The driver gives each request a unique ``rid`` query parameter and remembers what it
sent with it; this backend appends ``<rid> <method> <request>`` to the file named by
``SOAK_RECORD`` for each request it receives, flushed at once, before it answers.

Run as ``python -m bench.soak_backend PORT`` (waitress, on 127.0.0.1).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Iterable
from urllib.parse import parse_qsl

from waitress import serve

from bench.backend import StartResponse
from bench.backend import app as wps_app


class Recorder:
    """WSGI middleware: one line per request, written before the request is answered."""

    def __init__(self, app, path: str) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (open for the process' life)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        rid = query.get("rid", "-").replace(" ", "_") or "-"
        request = next((v for k, v in query.items() if k.lower() == "request"), "-").replace(" ", "_") or "-"
        with self.lock:
            self.out.write(f"{rid} {environ['REQUEST_METHOD']} {request}\n")
        return self.app(environ, start_response)


def main() -> None:
    port = int(sys.argv[1])
    serve(Recorder(wps_app, os.environ["SOAK_RECORD"]), host="127.0.0.1", port=port, threads=16,
          ident="soak-backend", _quiet=True)


if __name__ == "__main__":
    main()
