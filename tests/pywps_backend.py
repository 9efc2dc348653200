"""A real PyWPS backend for end-to-end tests, with its own processes, outputs and a request log.

The backend serves ``/wps`` (PyWPS) and ``/outputs/...`` (status documents and outputs, as a web
server beside PyWPS would), and records every request it receives so that tests can prove what
reached it (no token, no token environ data). Start it with :func:`tests.servers.serve_wsgi` and
call :meth:`PyWPSBackend.configure` with the bound address: PyWPS writes that address into its
documents, and only then exists.
"""
from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from pywps import ComplexOutput, Format, LiteralInput, LiteralOutput, Process, Service

#: Bytes per write and per read of output files: streamed, never whole in memory.
BLOCK = 1 << 20


class Hello(Process):
    """Synchronous: greets a name, so that a test can see the input arrive unchanged."""

    def __init__(self):
        super().__init__(
            self._handler, identifier="hello", title="Say hello", version="1.0",
            inputs=[LiteralInput("name", "Name", data_type="string")],
            outputs=[LiteralOutput("greeting", "Greeting", data_type="string")],
            store_supported=True, status_supported=True,
        )

    @staticmethod
    def _handler(request, response):
        response.outputs["greeting"].data = "Hello " + request.inputs["name"][0].data
        return response


class Countdown(Process):
    """Asynchronous with progress: counts down ``steps`` steps of ``delay`` seconds each."""

    def __init__(self):
        super().__init__(
            self._handler, identifier="countdown", title="Count down with progress", version="1.0",
            inputs=[LiteralInput("steps", "Steps", data_type="integer", default=3, min_occurs=0),
                    LiteralInput("delay", "Seconds per step", data_type="float", default=0.2, min_occurs=0)],
            outputs=[LiteralOutput("result", "Result", data_type="string")],
            store_supported=True, status_supported=True,
        )

    @staticmethod
    def _handler(request, response):
        steps = request.inputs["steps"][0].data if "steps" in request.inputs else 3
        delay = request.inputs["delay"][0].data if "delay" in request.inputs else 0.2
        for step in range(steps):
            response.update_status(f"step {step + 1} of {steps}", int(100 * step / steps))
            time.sleep(delay)
        response.outputs["result"].data = f"counted down {steps} steps"
        return response


class BigFile(Process):
    """Writes ``size_mb`` MiB of pseudo-random bytes, returned by reference, and their SHA-256."""

    def __init__(self):
        super().__init__(
            self._handler, identifier="bigfile", title="A large file by reference", version="1.0",
            inputs=[LiteralInput("size_mb", "Size in MiB", data_type="integer")],
            outputs=[ComplexOutput("file", "The file", as_reference=True,
                                   supported_formats=[Format("application/octet-stream", extension=".bin")]),
                     LiteralOutput("sha256", "SHA-256 of the file", data_type="string")],
            store_supported=True, status_supported=True,
        )

    def _handler(self, request, response):
        size_mb = request.inputs["size_mb"][0].data
        path = os.path.join(self.workdir, "big.bin")
        digest = hashlib.sha256()
        rng = random.Random(size_mb)
        with open(path, "wb") as out:
            for _ in range(size_mb):
                block = rng.randbytes(BLOCK)
                digest.update(block)
                out.write(block)
        response.outputs["file"].file = path
        response.outputs["sha256"].data = digest.hexdigest()
        return response


PROCESSES = (Hello, Countdown, BigFile)


@dataclass
class Recorded:
    """What the backend saw of one request: enough to prove what the proxy forwarded."""

    method: str
    path: str
    query: str
    headers: Dict[str, str]
    environ_keys: List[str]
    body: bytes = b""


@dataclass
class PyWPSBackend:
    """A WSGI app: PyWPS at ``/wps``, files at ``/outputs/``, every request recorded."""

    root: Path
    requests: List[Recorded] = field(default_factory=list)
    #: Extra routes for misbehaviour tests: path -> WSGI app (``/slow``, ``/broken``, ...).
    extra: Dict[str, Callable] = field(default_factory=dict)
    _service: Optional[Service] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def configure(self, base_url: str) -> None:
        """Write the PyWPS config naming ``base_url`` and start PyWPS (async: multiprocessing)."""
        for sub in ("outputs", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cfg = self.root / "pywps.cfg"
        cfg.write_text(
            "[server]\n"
            f"url = {base_url}/wps\n"
            f"outputurl = {base_url}/outputs/\n"
            f"outputpath = {self.outputs}\n"
            f"workdir = {self.root / 'work'}\n"
            "maxsingleinputsize = 1mb\n"
            "parallelprocesses = 4\n"
            "storage_copy_function = link\n"
            "[processing]\nmode = default\n"
            f"[logging]\nlevel = WARNING\ndatabase = sqlite:///{self.root / 'pywps-log.sqlite'}\n",
            encoding="utf-8",
        )
        self._service = Service([p() for p in PROCESSES], cfgfiles=[str(cfg)])

    def __call__(self, environ, start_response):
        body = b""
        if environ.get("PATH_INFO", "").startswith("/wps") and environ.get("CONTENT_LENGTH"):
            # PyWPS reads the body itself; keep a copy for the log and hand it on.
            body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            environ["wsgi.input"] = io.BytesIO(body)
        with self._lock:
            self.requests.append(Recorded(
                method=environ["REQUEST_METHOD"], path=environ.get("PATH_INFO", ""),
                query=environ.get("QUERY_STRING", ""),
                headers={k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")},
                environ_keys=sorted(environ), body=body))
        path = environ.get("PATH_INFO", "")
        if path in self.extra:
            return self.extra[path](environ, start_response)
        if path == "/wps" and self._service is not None:
            return self._service(environ, start_response)
        if path.startswith("/outputs/"):
            return self._file(path[len("/outputs/"):], environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    def _file(self, relative: str, environ, start_response):
        parts = relative.split("/")
        target = self.outputs.joinpath(*parts)
        if any(p in ("", ".", "..") for p in parts) or not target.is_file():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        media_type = "text/xml" if target.suffix == ".xml" else (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        start_response("200 OK", [("Content-Type", media_type), ("Content-Length", str(target.stat().st_size))])
        return _read_blocks(target)


def _read_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while True:
            block = source.read(BLOCK)
            if not block:
                return
            yield block
