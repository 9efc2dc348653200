"""A fast, deterministic fake OWS backend for the benchmark: a bare WSGI app, no framework.

It answers what a WPS 1.0.0 server answers, cheaply enough that the numbers measure Twitcher:

- ``GetCapabilities`` (GET or POST): a ~20 KB document whose operation URLs point at the backend
  itself, so that Twitcher has to rewrite them;
- ``Execute`` (GET or POST): a ~1 KB ``ExecuteResponse`` whose ``statusLocation`` and output
  ``Reference`` point at the backend too; with ``RawDataOutput`` in the query, the output itself;
- ``GetMap`` at ``/wms``: 64 KiB of binary bytes as ``image/png``, a map as WMS servers answer it;
- ``/outputs/<N>mb.bin`` (beside the endpoint, like PyWPS outputs): N MB of deterministic bytes,
  streamed in 1 MB blocks, with a known SHA-256 (:func:`expected_sha256`) so a client can check what a proxy delivered;
- anything else: an OWS ``ExceptionReport`` with a 4xx status.

Documents are built once per base URL and cached, so a request costs a dict lookup and a write.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
from functools import lru_cache
from typing import Callable, Iterable, Iterator, List, Tuple
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

#: Processes listed in GetCapabilities: enough to make the document about 20 KB.
CAPABILITIES_PROCESSES = 62
#: One block of the large file; the file is this block repeated, so any size is cheap to serve.
BLOCK_SIZE = 1024 * 1024
#: The largest file the backend serves, to keep a typo from streaming for hours.
MAX_FILE_MB = 4096
#: The answer to an Execute that asks for its output raw (``RawDataOutput``): the output itself.
RAW_OUTPUT = b"twitcher benchmark\n"
#: Bytes of a GetMap answer.
MAP_SIZE = 64 * 1024
#: Largest POST body the backend reads.
MAX_BODY = 1024 * 1024

_LARGE_FILE = re.compile(r"/outputs/(\d+)mb\.bin$")
_ROOT_ELEMENT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


@lru_cache(maxsize=1)
def file_block() -> bytes:
    """1 MB of deterministic, incompressible-looking bytes: a SHA-256 chain, the same on every run."""
    out = bytearray()
    digest = b"twitcher-bench"
    while len(out) < BLOCK_SIZE:
        digest = hashlib.sha256(digest).digest()
        out += digest
    return bytes(out[:BLOCK_SIZE])


def expected_sha256(size_mb: int) -> str:
    """The SHA-256 hex digest of the ``<size_mb>mb.bin`` file."""
    digest = hashlib.sha256()
    block = file_block()
    for _ in range(size_mb):
        digest.update(block)
    return digest.hexdigest()


def _process_offering(index: int) -> str:
    return (
        f'<wps:Process wps:processVersion="1.0.{index}">'
        f"<ows:Identifier>bench.process_{index:03d}</ows:Identifier>"
        f"<ows:Title>Benchmark process number {index}</ows:Title>"
        f"<ows:Abstract>A process that does nothing but fill this capabilities document, "
        f"number {index} of {CAPABILITIES_PROCESSES}, so that the proxy has real work.</ows:Abstract>"
        f"</wps:Process>\n"
    )


@lru_cache(maxsize=16)
def capabilities(base_url: str) -> bytes:
    """The WPS 1.0.0 capabilities document of a backend reached at ``base_url``."""
    url = escape(base_url, {'"': "&quot;"})
    operations = "".join(
        f'<ows:Operation name="{name}"><ows:DCP><ows:HTTP>'
        f'<ows:Get xlink:href="{url}?"/><ows:Post xlink:href="{url}"/>'
        f"</ows:HTTP></ows:DCP></ows:Operation>\n"
        for name in ("GetCapabilities", "DescribeProcess", "Execute")
    )
    processes = "".join(_process_offering(i) for i in range(CAPABILITIES_PROCESSES))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<wps:Capabilities service="WPS" version="1.0.0" xml:lang="en-US" updateSequence="1" '
        'xmlns:wps="http://www.opengis.net/wps/1.0.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink">\n'
        "<ows:ServiceIdentification><ows:Title>Twitcher benchmark backend</ows:Title>"
        "<ows:ServiceType>WPS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>"
        "</ows:ServiceIdentification>\n"
        "<ows:ServiceProvider><ows:ProviderName>bench</ows:ProviderName></ows:ServiceProvider>\n"
        f"<ows:OperationsMetadata>\n{operations}</ows:OperationsMetadata>\n"
        f"<wps:ProcessOfferings>\n{processes}</wps:ProcessOfferings>\n"
        "<wps:Languages><wps:Default><ows:Language>en-US</ows:Language></wps:Default>"
        "<wps:Supported><ows:Language>en-US</ows:Language></wps:Supported></wps:Languages>\n"
        "</wps:Capabilities>\n"
    ).encode()


#: Stands for the job id in the cached ``ExecuteResponse``; each answer gets its own id.
JOB_ID_SLOT = b"JOBID-SLOT-0000000000000000"
_job_ids = itertools.count(1)


def execute_response(base_url: str) -> bytes:
    """A finished ``ExecuteResponse`` with a job id of its own, as a real WPS answers each Execute.

    One fixed id would make Twitcher find every job "recorded already" and log a warning per
    request, which no real backend causes; new ids cost it a job record per Execute, which a real
    one does (``storeExecuteResponse``).
    """
    job_id = f"{os.getpid()}-{next(_job_ids):020d}".encode()
    return _execute_template(base_url).replace(JOB_ID_SLOT, job_id)


@lru_cache(maxsize=16)
def _execute_template(base_url: str) -> bytes:
    """The ``ExecuteResponse`` whose links point back at the backend reached at ``base_url``."""
    url = escape(base_url, {'"': "&quot;"})
    # Like PyWPS, status documents and outputs live beside the endpoint, not below it.
    outputs = escape(base_url.rsplit("/", 1)[0], {'"': "&quot;"}) + "/outputs"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<wps:ExecuteResponse service="WPS" version="1.0.0" xml:lang="en-US" '
        'xmlns:wps="http://www.opengis.net/wps/1.0.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'serviceInstance="{url}?service=WPS&amp;request=GetCapabilities" '
        f'statusLocation="{outputs}/status-{JOB_ID_SLOT.decode()}.xml">\n'
        '<wps:Process wps:processVersion="1.0.0"><ows:Identifier>bench.echo</ows:Identifier>'
        "<ows:Title>Echo</ows:Title></wps:Process>\n"
        '<wps:Status creationTime="2024-01-01T00:00:00Z"><wps:ProcessSucceeded>done</wps:ProcessSucceeded>'
        "</wps:Status>\n"
        "<wps:ProcessOutputs><wps:Output><ows:Identifier>output</ows:Identifier><ows:Title>Output</ows:Title>"
        f'<wps:Reference href="{outputs}/1mb.bin" mimeType="application/octet-stream"/>'
        "</wps:Output>\n"
        "<wps:Output><ows:Identifier>echo</ows:Identifier><ows:Title>Echo</ows:Title>"
        "<wps:Data><wps:LiteralData>twitcher benchmark</wps:LiteralData></wps:Data></wps:Output>"
        "</wps:ProcessOutputs>\n"
        "</wps:ExecuteResponse>\n"
    ).encode()


def exception_report(code: str, text: str, locator: str = "") -> bytes:
    """An OWS 1.1 ``ExceptionReport``, what a real WPS answers to a request it cannot serve."""
    where = f' locator="{escape(locator, {chr(34): "&quot;"})}"' if locator else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/1.1" version="1.0.0">'
        f'<ows:Exception exceptionCode="{code}"{where}><ows:ExceptionText>{escape(text)}</ows:ExceptionText>'
        "</ows:Exception></ows:ExceptionReport>\n"
    ).encode()


def _base_url(environ: dict) -> str:
    """The URL the client used for the OWS endpoint (path included, query excluded)."""
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path or '/'}"


def _read_body(environ: dict) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return environ["wsgi.input"].read(min(length, MAX_BODY)) if length > 0 else b""


def _request_type(environ: dict) -> str:
    """The OWS request name, lower-case: from the query for GET, the root element for POST."""
    if environ["REQUEST_METHOD"] == "POST":
        match = _ROOT_ELEMENT.search(_read_body(environ).lstrip().split(b"?>", 1)[-1])
        return match.group(1).decode("ascii").lower() if match else ""
    for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        if key.lower() == "request":
            return value.lower()
    return ""


def _xml(start_response: StartResponse, status: str, body: bytes) -> List[bytes]:
    start_response(status, [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def _stream_file(size_mb: int) -> Iterator[bytes]:
    block = file_block()
    for _ in range(size_mb):
        yield block


def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point (``gunicorn bench.backend:app``)."""
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    large = _LARGE_FILE.search(path)
    if large and method == "GET":
        size_mb = int(large.group(1))
        if size_mb > MAX_FILE_MB:
            return _xml(start_response, "400 Bad Request",
                        exception_report("InvalidParameterValue", f"at most {MAX_FILE_MB} MB", "size"))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size_mb * BLOCK_SIZE))])
        return _stream_file(size_mb)
    if method not in ("GET", "POST"):
        return _xml(start_response, "405 Method Not Allowed",
                    exception_report("OperationNotSupported", f"method {method} is not supported", method))
    request = _request_type(environ)
    if request == "getcapabilities":
        return _xml(start_response, "200 OK", capabilities(_base_url(environ)))
    if request == "execute" and "rawdataoutput=" in environ.get("QUERY_STRING", "").lower():
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(RAW_OUTPUT)))])
        return [RAW_OUTPUT]
    if request == "execute":
        return _xml(start_response, "200 OK", execute_response(_base_url(environ)))
    if request == "getmap" and path.endswith("/wms"):
        start_response("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(MAP_SIZE))])
        return [file_block()[:MAP_SIZE]]
    if not request:
        return _xml(start_response, "400 Bad Request",
                    exception_report("MissingParameterValue", "the request parameter is missing", "request"))
    return _xml(start_response, "400 Bad Request",
                exception_report("OperationNotSupported", f"request {request} is not supported", request))
