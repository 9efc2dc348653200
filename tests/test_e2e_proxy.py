"""End to end on 127.0.0.1: OWSLib -> live Twitcher -> real PyWPS backend, whole WPS jobs included."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Iterator, List, Tuple
from urllib.parse import urlsplit

import pytest
import requests
from lxml import etree
from owslib.wps import ASYNC, SYNC, WebProcessingService

from tests.pywps_backend import PyWPSBackend
from tests.servers import RunningTwitcher, running_twitcher, serve_wsgi

TIMEOUT = 30
OWS = "{http://www.opengis.net/ows/1.1}"
WPS = "{http://www.opengis.net/wps/1.0.0}"
TOKEN_ENVIRON = {"DATA_ACCESS_SECRET": "environ-value-only-for-the-internal-wps"}
#: Size of the large download; the issue asks for at least 200 MB in CI.
LARGE_MB = 200
#: Measured 30-50 MiB (all threads: backend, proxy and client); a buffering proxy would add 200+.
MAX_RSS_GROWTH_MB = 96


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The PyWPS backend, served for the whole module; yields (backend, base URL)."""
    wps = PyWPSBackend(tmp_path_factory.mktemp("pywps"))
    wps.extra["/slow"] = _slow_app
    wps.extra["/broken-ows"] = _broken_ows_app
    wps.extra["/broken-html"] = _broken_html_app
    # The backend trusts Twitcher's X-Forwarded-* headers, as a backend behind a proxy does;
    # otherwise waitress would drop them before the request log could show them.
    with serve_wsgi(wps, trusted_proxy="127.0.0.1",
                    trusted_proxy_headers={"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}) as base_url:
        wps.configure(base_url)
        yield wps, base_url


@pytest.fixture(scope="module")
def twitcher(tmp_path_factory, backend) -> Iterator[RunningTwitcher]:
    """A live Twitcher with the backend as ``emu``, its misbehaving paths and a ``down`` service."""
    _, backend_url = backend
    services = [(backend_url + "/wps", {"name": "emu"})]
    services += [(f"{backend_url}/{name}", {"name": name, "public": True})
                 for name in ("slow", "broken-ows", "broken-html")]
    services.append((f"http://127.0.0.1:{_closed_port()}/wps", {"name": "down", "public": True}))
    with running_twitcher(tmp_path_factory.mktemp("twitcher"), services,
                          settings={"twitcher.proxy_timeout": "2 60"}) as live:
        yield live


@pytest.fixture(scope="module")
def impatient_twitcher(twitcher) -> Iterator[str]:
    """A second Twitcher on the same store whose backend read timeout is one second."""
    with twitcher.another({"twitcher.proxy_timeout": "1 1"}) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def token(twitcher) -> str:
    return twitcher.token(environ=TOKEN_ENVIRON)


@pytest.fixture
def proxy_url(twitcher) -> str:
    return twitcher.proxy("emu")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slow_app(environ, start_response):
    time.sleep(2.5)  # past the read timeout of impatient_twitcher
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"too late"]


BACKEND_REPORT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ows:ExceptionReport '
                  b'xmlns:ows="http://www.opengis.net/ows/1.1" version="1.0.0"><ows:Exception '
                  b'exceptionCode="NoApplicableCode"><ows:ExceptionText>backend failed</ows:ExceptionText>'
                  b'</ows:Exception></ows:ExceptionReport>')
BACKEND_HTML = b"<html><body><h1>500 Internal Server Error</h1></body></html>"


def _broken_ows_app(environ, start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/xml; charset=utf-8")])
    return [BACKEND_REPORT]


def _broken_html_app(environ, start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/html")])
    return [BACKEND_HTML]


def _wps(url: str, **kwargs) -> WebProcessingService:
    return WebProcessingService(url, version="1.0.0", skip_caps=True, timeout=TIMEOUT, **kwargs)


def _requests_since(wps: PyWPSBackend, mark: int):
    return wps.requests[mark:]


# --- reading the service without a token --------------------------------------------------------

def test_capabilities_without_token_point_every_operation_at_the_proxy(proxy_url):
    wps = _wps(proxy_url)
    wps.getcapabilities()
    assert {"hello", "countdown", "bigfile"} <= {p.identifier for p in wps.processes}
    hrefs = [m["url"] for op in wps.operations for m in op.methods]
    assert hrefs and all(h.startswith(proxy_url) for h in hrefs)


def test_describe_process_without_token(proxy_url):
    process = _wps(proxy_url).describeprocess("bigfile")
    assert [o.identifier for o in process.processOutputs] == ["file", "sha256"]


# --- executing with a token -----------------------------------------------------------------------

def test_sync_execute_by_post_with_token_header(proxy_url, token):
    execution = _wps(proxy_url, headers={"Access-Token": token}).execute(
        "hello", [("name", "header")], mode=SYNC)
    assert execution.isSucceded()
    assert execution.processOutputs[0].data == ["Hello header"]


def test_sync_execute_by_post_with_token_parameter(proxy_url, token):
    execution = _wps(f"{proxy_url}?access_token={token}").execute("hello", [("name", "parameter")], mode=SYNC)
    assert execution.isSucceded()
    assert execution.processOutputs[0].data == ["Hello parameter"]


@pytest.mark.parametrize(("query", "expected"), [
    ("service=WPS&request=Execute&version=1.0.0&identifier=hello&DataInputs=name=J%C3%B6rg%20M", "Hello Jörg M"),
    ("service=WPS&request=Execute&version=1.0.0&identifier=countdown&DataInputs=steps=2;delay=0.01",
     "counted down 2 steps"),
])
def test_sync_execute_by_get_keeps_the_query_string_byte_for_byte(proxy_url, token, backend, query, expected):
    wps, _ = backend
    mark = len(wps.requests)
    answer = requests.get(f"{proxy_url}?{query}&access_token={token}", timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert etree.fromstring(answer.content).findtext(f".//{WPS}LiteralData") == expected
    assert [r.query for r in _requests_since(wps, mark)] == [query]


def test_owslib_with_the_token_in_the_path_runs_execute_and_the_backend_sees_neither(proxy_url, token, backend):
    wps, _ = backend
    mark = len(wps.requests)
    execution = _wps(f"{proxy_url}/{token}").execute("hello", [("name", "path")], mode=SYNC)
    assert execution.processOutputs[0].data == ["Hello path"]
    seen = _requests_since(wps, mark)
    assert [r.path for r in seen] == ["/wps"]
    assert token not in seen[0].query and token.encode() not in seen[0].body


def test_execute_without_token_is_refused_and_never_reaches_the_backend(proxy_url, backend):
    wps, _ = backend
    mark = len(wps.requests)
    answer = requests.get(f"{proxy_url}?service=WPS&request=Execute&version=1.0.0&identifier=hello"
                          "&DataInputs=name=x", timeout=TIMEOUT)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert _requests_since(wps, mark) == []


def test_async_execute_is_polled_to_completion_through_rewritten_status_urls(proxy_url, token):
    execution = _wps(proxy_url, headers={"Access-Token": token}).execute(
        "countdown", [("steps", "4"), ("delay", "0.25")], output=[("result", False)], mode=ASYNC)
    assert execution.statusLocation.startswith(proxy_url + "/")
    seen_percent = set()
    deadline = time.monotonic() + TIMEOUT
    while not execution.isComplete():
        assert time.monotonic() < deadline, "the async job did not finish in time"
        execution.checkStatus(sleepSecs=0.2)
        seen_percent.add(execution.percentCompleted)
    assert execution.isSucceded(), execution.errors
    assert execution.processOutputs[0].data == ["counted down 4 steps"]
    assert any(0 < p < 100 for p in seen_percent), seen_percent


def test_status_document_needs_a_token(proxy_url, token):
    execution = _wps(proxy_url, headers={"Access-Token": token}).execute(
        "countdown", [("steps", "1"), ("delay", "0.01")], output=[("result", False)], mode=ASYNC)
    assert requests.get(execution.statusLocation, timeout=TIMEOUT).status_code == 401
    # PyWPS rewrites a status file in place (truncate, then write) while the job runs, and the proxy
    # passes the backend's answer as it is: a read may catch it half written, so read again.
    root = None
    for _ in range(20):
        answer = requests.get(execution.statusLocation, params={"access_token": token}, timeout=TIMEOUT)
        assert answer.status_code == 200
        try:
            root = etree.fromstring(answer.content)
            break
        except etree.XMLSyntaxError:
            time.sleep(0.05)
    assert root is not None and root.tag == f"{WPS}ExecuteResponse"


def _run_bigfile(proxy_url: str, token: str, size_mb: int):
    execution = _wps(proxy_url, headers={"Access-Token": token}).execute(
        "bigfile", [("size_mb", str(size_mb))], mode=SYNC)
    assert execution.isSucceded(), execution.errors
    outputs = {o.identifier: o for o in execution.processOutputs}
    return outputs["file"].reference, outputs["sha256"].data[0]


def test_output_is_downloaded_through_its_rewritten_reference(proxy_url, token):
    reference, expected = _run_bigfile(proxy_url, token, 3)
    assert reference.startswith(proxy_url + "/outputs/")
    assert requests.get(reference, timeout=TIMEOUT).status_code == 401
    answer = requests.get(reference, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == expected
    assert answer.headers["Content-Length"] == str(3 << 20)


def test_backend_never_sees_the_token_or_its_environ(proxy_url, token, backend):
    wps, _ = backend
    mark = len(wps.requests)
    _wps(proxy_url, headers={"Access-Token": token}).execute("hello", [("name", "a")], mode=SYNC)
    _wps(f"{proxy_url}?token={token}").execute("hello", [("name", "b")], mode=SYNC)
    reference, _ = _run_bigfile(proxy_url, token, 1)
    requests.get(reference, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT).raise_for_status()
    seen = _requests_since(wps, mark)
    assert len(seen) == 4
    for record in seen:
        assert token not in record.query and token.encode() not in record.body
        assert token not in "".join(record.headers.values())
        assert not {"Authorization", "Access-Token", "Cookie"} & set(record.headers)
        assert "DATA_ACCESS_SECRET" not in record.environ_keys
        assert TOKEN_ENVIRON["DATA_ACCESS_SECRET"] not in "".join(record.headers.values())
        assert record.headers["X-Forwarded-For"] == "127.0.0.1"
        assert record.headers["X-Forwarded-Host"] == urlsplit(proxy_url).netloc


# --- large downloads ------------------------------------------------------------------------------

class RSSSampler:
    """Samples this process' resident memory every few milliseconds; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.samples: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.samples.append(self.rss())

    def __enter__(self) -> RSSSampler:
        self.samples.append(self.rss())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def download_sha256(url: str, params: dict) -> Tuple[str, int]:
    """Stream ``url`` (it must answer 200) through SHA-256, never holding it whole: (hex digest, bytes)."""
    digest, size = hashlib.sha256(), 0
    with requests.get(url, params=params, stream=True, timeout=TIMEOUT) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_content(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def test_large_download_streams_with_matching_hash_in_bounded_memory(proxy_url, token):
    reference, expected = _run_bigfile(proxy_url, token, LARGE_MB)
    started = time.monotonic()
    with RSSSampler() as memory:
        hexdigest, size = download_sha256(reference, {"access_token": token})
    elapsed = time.monotonic() - started
    growth_mb = (max(memory.samples) - memory.samples[0]) / 2**20
    print(f"{LARGE_MB} MiB through the proxy in {elapsed:.2f} s ({LARGE_MB / elapsed:.0f} MiB/s), "
          f"peak RSS growth {growth_mb:.1f} MiB")
    assert size == LARGE_MB << 20
    assert hexdigest == expected
    assert growth_mb < MAX_RSS_GROWTH_MB


# --- a misbehaving backend ------------------------------------------------------------------------

def _report(answer: requests.Response):
    assert answer.headers["Content-Type"].startswith("text/xml")
    return etree.fromstring(answer.content).find(f"{OWS}Exception")


def _next_request_works(proxy_url: str) -> None:
    answer = requests.get(f"{proxy_url}?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 200


def test_backend_down_is_a_502_exception_report(twitcher, proxy_url):
    answer = requests.get(twitcher.proxy("down") + "?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 502
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"
    assert "127.0.0.1" not in answer.text  # the hidden backend's address is not revealed
    _next_request_works(proxy_url)


def test_backend_slower_than_the_read_timeout_is_a_504_exception_report(impatient_twitcher, proxy_url):
    started = time.monotonic()
    answer = requests.get(impatient_twitcher + "/ows/proxy/slow?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 504
    assert time.monotonic() - started < 2.4
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"
    answer = requests.get(impatient_twitcher + "/ows/proxy/emu?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 200


def test_backend_exception_report_passes_through_with_its_status(twitcher, proxy_url):
    answer = requests.get(twitcher.proxy("broken-ows") + "?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 500
    assert answer.content == BACKEND_REPORT
    _next_request_works(proxy_url)


def test_backend_html_error_passes_through_with_its_status(twitcher, proxy_url):
    answer = requests.get(twitcher.proxy("broken-html") + "?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 500
    assert answer.headers["Content-Type"] == "text/html"
    assert answer.content == BACKEND_HTML
    _next_request_works(proxy_url)
