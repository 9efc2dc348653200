"""The OWS proxy (twitcher/proxy/view.py): target URLs, headers, bodies, and the view on a real backend."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from pyramid.request import Request

from tests.servers import serve_wsgi
from twitcher.exceptions import InvalidParameterValue, RequestTooLarge
from twitcher.proxy.upstream import RECEIVE_BUFFER, STREAM_BUFFER, Upstream
from twitcher.proxy.view import (
    BoundedBody,
    environ_headers,
    forward_request_headers,
    forward_response_headers,
    proxy_response,
    request_body,
    send,
    target_url,
)
from twitcher.services import service_from_registration

OWS = "{http://www.opengis.net/ows/1.1}"


# --- where a request goes -------------------------------------------------------------------------

@pytest.mark.parametrize(("service_url", "query", "extra", "expected"), [
    ("http://h:5000/wps", "", None, "http://h:5000/wps"),
    ("http://h:5000/wps", "a=1", "", "http://h:5000/?a=1"),
    ("http://h:5000/wps", "service=WPS&request=GetCapabilities", None,
     "http://h:5000/wps?service=WPS&request=GetCapabilities"),
    ("http://h/ms?map=/m.map", "request=GetMap&access_token=t", None, "http://h/ms?map=/m.map&request=GetMap"),
    ("http://h/wps", "DataInputs=a=1;b=2&Token=t&x=%20%3B+", None, "http://h/wps?DataInputs=a=1;b=2&x=%20%3B+"),
    ("http://h:5000/wps", "", "outputs/x.nc", "http://h:5000/outputs/x.nc"),
    ("http://h/api/", "", "jobs/1", "http://h/api/jobs/1"),
    ("http://h/a/b/wps?map=m", "access_token=t&dl=1", "out/f.nc", "http://h/a/b/out/f.nc?dl=1"),
    ("http://h/wps", "", "outputs/a b%é.nc", "http://h/outputs/a%20b%25%C3%A9.nc"),
    ("http://h", "", "x", "http://h/x"),
    # What no URL may carry is percent-encoded (WSGI gives bytes as latin-1); escapes stay as sent.
    ("http://h/wps", 'q=a b&x="<>"#f&u=\xc3\xa9&p=%zz', None, "http://h/wps?q=a%20b&x=%22%3C%3E%22%23f&u=%C3%A9&p=%zz"),
])
def test_target_is_the_registered_url_with_the_client_query_and_extra_path(service_url, query, extra, expected):
    assert target_url(service_url, query, extra) == expected


@pytest.mark.parametrize("extra", [
    "..", "../secret", "outputs/../../secret", "outputs/..", "./x", "%2e%2e/secret", "%252e%252e/secret",
    "a/%2E%2e", "/etc/passwd", "//evil.example/x", "a//b", "http://evil.example/", "javascript:alert(1)",
    "a\\..\\b", "a%5c..", "x\r\nHost: evil", "a%2f..%2fb",
    # Still changing after four rounds of decoding: refused whatever it would become.
    "%252525252e%252525252e", "x%2525252541",
])
def test_extra_paths_that_could_leave_the_service_directory_are_refused(extra):
    with pytest.raises(InvalidParameterValue) as refused:
        target_url("http://h:5000/svc/wps", "", extra)
    assert refused.value.locator == "extra_path"


@given(st.text(alphabet=st.sampled_from("./\\%2eEfF5c:@a?#; "), max_size=12))
def test_no_extra_path_reaches_outside_the_service_directory(extra):
    try:
        url = target_url("http://h:5000/svc/wps", "", extra)
    except InvalidParameterValue:
        return
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "h:5000")
    path = unquote(unquote(parts.path))
    assert posixpath.normpath(path).startswith("/svc") and ".." not in path.split("/")


# --- headers --------------------------------------------------------------------------------------

def test_credentials_hop_by_hop_and_ssl_headers_are_not_forwarded():
    headers = forward_request_headers([
        ("Host", "twitcher.example"), ("Cookie", "session=1"), ("Authorization", "Bearer t"),
        ("Access-Token", "t"), ("X-Ssl-Client-Verify", "SUCCESS"), ("X-SSL-Client-DN", "CN=x"),
        ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "300"), ("TE", "trailers"),
        ("Content-Length", "12"), ("Accept", "text/xml"), ("User-Agent", "OWSLib"), ("X-Custom", "kept"),
    ], client_addr="10.0.0.7", scheme="https", host="twitcher.example")
    assert headers == [
        ("Accept", "text/xml"), ("User-Agent", "OWSLib"), ("X-Custom", "kept"), ("Accept-Encoding", "identity"),
        ("X-Forwarded-For", "10.0.0.7"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "twitcher.example"),
    ]


def test_environ_headers_are_the_headers_webob_sees():
    request = Request.blank("/x", method="POST", body=b"abc", headers={
        "X-Custom_Thing": "1", "Accept": "text/xml", "Content-Type": "text/xml", "Www-Authenticate": "x"})
    request.environ["CONTENT_LENGTH"] = "3"
    request.environ["wsgi.extra"] = "not a header"
    assert sorted(environ_headers(request.environ)) == sorted(request.headers.items())


def test_forwarded_for_extends_the_chain_and_accept_encoding_of_the_client_is_kept():
    headers = dict(forward_request_headers(
        [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Host", "spoofed"), ("Accept-Encoding", "gzip")],
        client_addr="10.0.0.7", scheme="http", host="tw"))
    assert headers == {"X-Forwarded-For": "1.2.3.4, 10.0.0.7", "Accept-Encoding": "gzip",
                       "X-Forwarded-Proto": "http", "X-Forwarded-Host": "tw"}


SERVICE = "http://h:5000/alias/wps"
PUBLIC = "https://tw/ows/proxy/emu"


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("Location", "http://h:5000/alias/outputs/x.nc", f"{PUBLIC}/outputs/x.nc"),
    ("Location", "HTTP://H:5000/alias/wps?service=WPS", f"{PUBLIC}?service=WPS"),
    ("Location", "//h:5000/alias/jobs/1", f"{PUBLIC}/jobs/1"),
    ("Location", "/alias/jobs/1#top", f"{PUBLIC}/jobs/1#top"),
    ("Location", "jobs/1", f"{PUBLIC}/jobs/1"),
    ("Location", "?request=GetStatus", f"{PUBLIC}?request=GetStatus"),
    ("Content-Location", "status/7.xml", f"{PUBLIC}/status/7.xml"),
    ("Location", "/outputs/x.nc", None),  # on the backend's origin, outside the service directory
    ("Location", "http://h:5000/", None),
    ("Location", "//h:5000/other", None),
    ("Location", "../other", None),
    ("Location", "http://[::1", None),  # cannot be parsed: dropped
    ("Location", "https://elsewhere.example/x", "https://elsewhere.example/x"),
    ("Location", "http://h:5001/alias/x", "http://h:5001/alias/x"),  # another origin
    ("Link", '<jobs/2>; rel="next", </x>; rel="prev"', f'<{PUBLIC}/jobs/2>; rel="next"'),
    ("Link", '<http://h:5000/alias/a>; rel=self; anchor="/secret"', None),
    ("Link", '<https://o.example/s>; rel=alternate; anchor="jobs/1"', f'<https://o.example/s>; rel=alternate; '
                                                                     f'anchor="{PUBLIC}/jobs/1"'),
    ("Link", '<x>; title="a, b"; rel=next,<https://o.example/y>', f'<{PUBLIC}/x>; title="a, b"; rel=next, '
                                                               '<https://o.example/y>'),
    ("Link", 'http://h:5000/alias/a; rel=next', None),  # not RFC 8288: it could hide anything
    ("Link", '<http://h:5000/alias/a>; rel="unterminated', None),
])
def test_backend_urls_in_response_headers_are_resolved_and_rewritten_or_dropped(name, value, expected):
    headers = forward_response_headers([(name, value)], SERVICE, PUBLIC, SERVICE + "?service=WPS")
    assert headers == ([] if expected is None else [(name, expected)])


def test_relative_locations_resolve_against_the_url_the_request_went_to():
    headers = forward_response_headers([("Location", "2.xml")], SERVICE, PUBLIC, "http://h:5000/alias/status/1.xml")
    assert headers == [("Location", f"{PUBLIC}/status/2.xml")]


def test_response_headers_lose_hop_by_hop_and_keep_repeated_end_to_end_headers():
    headers = forward_response_headers([
        ("Content-Type", "text/plain"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked"),
        ("Connection", "close, X-Internal"), ("X-Internal", "secret"), ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"), ("Location", "http://h:5000/outputs/x.nc"), ("Content-Location", "http://o/x"),
    ], "http://h:5000/wps", "https://tw/ows/proxy/emu")
    assert headers == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                       ("Location", "https://tw/ows/proxy/emu/outputs/x.nc"), ("Content-Location", "http://o/x")]


# --- request bodies -------------------------------------------------------------------------------

def test_bounded_body_streams_in_chunks_and_refuses_past_the_limit():
    payload = os.urandom(200_000)
    assert b"".join(BoundedBody(io.BytesIO(payload), limit=200_000)) == payload
    body = BoundedBody(io.BytesIO(payload), limit=100_000)
    with pytest.raises(RequestTooLarge):
        b"".join(body)
    assert body.exceeded


@pytest.mark.parametrize("tween_read_it", [False, True])
def test_request_body_is_whole_whether_or_not_the_tween_read_it(tween_read_it):
    payload = os.urandom(150_000)
    request = Request.blank("/ows/proxy/x", method="POST", body=payload)
    if tween_read_it:
        assert request.body == payload
    body = request_body(request, limit=1 << 20)
    assert len(body) == len(payload)
    assert (body if isinstance(body, bytes) else b"".join(body)) == payload


def test_a_body_still_in_the_client_socket_is_streamed_not_read_whole():
    payload = os.urandom(150_000)
    request = Request.blank("/ows/proxy/x", method="POST")
    request.environ.update({"wsgi.input": io.BytesIO(payload), "CONTENT_LENGTH": str(len(payload)),
                            "webob.is_body_seekable": False})
    body = request_body(request, limit=1 << 20)
    assert isinstance(body, BoundedBody) and len(body) == len(payload)
    assert b"".join(body) == payload


def test_a_body_of_unknown_length_growing_past_the_limit_is_refused_while_sending(backend):
    body = BoundedBody(io.BytesIO(os.urandom(300_000)), limit=100_000)
    with pytest.raises(RequestTooLarge):
        send(Upstream(), "POST", backend[1] + "/wps", [], body, True, (2.0, 5.0))


def test_request_body_announced_over_the_limit_is_refused_before_reading():
    request = Request.blank("/ows/proxy/x", method="POST", body=b"x" * 2000)
    with pytest.raises(RequestTooLarge):
        request_body(request, limit=1000)


# --- the connection pool --------------------------------------------------------------------------

def test_one_handle_set_per_thread_and_a_new_one_after_fork():
    upstream = Upstream()
    state = upstream._state()
    assert upstream._state() is state
    other = []
    thread = threading.Thread(target=lambda: other.append(upstream._state()))
    thread.start()
    thread.join(timeout=10)
    assert other and other[0] is not state
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when it got its own handles
        os._exit(0 if upstream._state() is not state else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    upstream.close()
    assert upstream._state() is not state


def test_an_abandoned_download_is_not_reused_for_the_next_request(backend):
    """A client that goes away mid-download: the backend connection must not serve the next
    request with the rest of the old body still in it."""
    upstream = Upstream()
    url = backend[1] + "/large"
    answer = proxy_response(send(upstream, "GET", url, [], None, True, (2.0, 5.0)), "GET", url,
                            backend[1] + "/wps", "http://tw/ows/proxy/svc", 1024)
    chunks = iter(answer.app_iter)
    assert 0 < len(next(chunks)) <= STREAM_BUFFER + RECEIVE_BUFFER
    answer.app_iter.close()
    again = send(upstream, "GET", backend[1] + "/echo?after=1", [], None, True, (2.0, 5.0))
    body = b"".join(again.chunks())
    again.close()
    assert json.loads(body) == {"path": "/echo", "query": "after=1", "length": 0,
                                          "sha256": hashlib.sha256(b"").hexdigest()}
    upstream.close()


# --- the view, on a real backend ------------------------------------------------------------------

class Backend:
    """A small real backend: answers by path and records what it received."""

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.seen.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                          "query": environ["QUERY_STRING"], "body": body,
                          "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")}})
        host = environ["HTTP_HOST"]
        path = environ["PATH_INFO"]
        links = f'<r xmlns:xlink="http://www.w3.org/1999/xlink">' \
                f'<op xlink:href="http://{host}{path}?service=WPS&amp;a=1"/>' \
                f'<out href="http://{host}/outputs/f.nc"/><ext href="http://elsewhere.example/wps"/>'
        if path == "/big-xml":
            document = (links + "<pad>" + "x" * 5000 + "</pad></r>").encode()
            if "chunked" in environ["QUERY_STRING"]:
                start_response("200 OK", [("Content-Type", "text/xml")])
                return iter([document[:1000], document[1000:]])
            return self._answer(start_response, "200 OK", "text/xml", document)
        links += "</r>"
        if path == "/large":  # 4 MB in 64 KiB blocks, more than any one chunk the proxy reads
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(64 * 65536))])
            return iter([b"\x00" * 65536] * 64)
        if path.endswith("/xml"):
            content_type = environ["QUERY_STRING"].partition("ct=")[2].replace("%2B", "+") or "text/xml"
            return self._answer(start_response, "200 OK", content_type, links.encode())
        if path == "/gzip":
            return self._answer(start_response, "200 OK", "application/xml", gzip.compress(links.encode()),
                                [("Content-Encoding", "gzip")])
        if path == "/gzip-big":  # 4 MB of XML in about 4 KB: more than any rewrite limit here
            document = (links + "<pad>" + "x" * (4 << 20) + "</pad></r>").encode()
            return self._answer(start_response, "200 OK", "application/xml", gzip.compress(document),
                                [("Content-Encoding", "gzip")])
        if path == "/br":  # an encoding Twitcher does not decode: must pass untouched
            return self._answer(start_response, "200 OK", "application/xml", b"\x8b\x00\x80not-really-brotli",
                                [("Content-Encoding", "br")])
        if path == "/redirect":
            return self._answer(start_response, "302 Found", "text/plain", b"",
                                [("Location", f"http://{host}/outputs/f.nc")])
        if path.endswith("/answer-headers"):  # answers with the headers the test asks for
            extra = [tuple(pair) for pair in json.loads(environ["HTTP_X_ANSWER_HEADERS"])]
            return self._answer(start_response, "200 OK", "text/plain", b"ok", extra)
        if path == "/teapot":
            return self._answer(start_response, "418 I'm a teapot", "text/plain", b"short and stout",
                                [("X-Custom", "yes"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        report = json.dumps({"path": path, "query": environ["QUERY_STRING"], "length": len(body),
                             "sha256": hashlib.sha256(body).hexdigest()}).encode()
        return self._answer(start_response, "200 OK", "application/json", report)

    @staticmethod
    def _answer(start_response, status, content_type, body, extra=()):
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra])
        return [body]


@pytest.fixture
def backend():
    app = Backend()
    with serve_wsgi(app) as base_url:
        app.seen.clear()  # forget the start-up probe
        yield app, base_url


@pytest.fixture
def proxy(make_app, store, backend):
    """Twitcher without the security tween, so that these tests see the proxy alone."""
    def build(service_path="/wps", data=None, **settings):
        store.save_service(service_from_registration(backend[1] + service_path, {"name": "svc", **(data or {})}))
        return make_app(ows_security="false", **settings)

    return build


def _report(answer):
    assert answer.content_type == "text/xml"
    return etree.fromstring(answer.body).find(f"{OWS}Exception")


def test_query_string_reaches_the_backend_byte_for_byte_without_tokens(proxy, backend):
    app = proxy("/wps?map=/m.map")
    answer = app.get("/ows/proxy/svc?DataInputs=a=1;b=%3B2&access_token=secret&TOKEN=secret&x=%20+")
    assert answer.json["query"] == "map=/m.map&DataInputs=a=1;b=%3B2&x=%20+"


def test_post_body_is_streamed_to_the_backend_unchanged(proxy, backend):
    payload = os.urandom(3 << 20)
    answer = proxy(max_request_body=str(4 << 20)).post("/ows/proxy/svc", payload,
                                                      content_type="application/octet-stream")
    assert answer.json["length"] == len(payload)
    assert answer.json["sha256"] == hashlib.sha256(payload).hexdigest()


def test_post_body_over_the_limit_is_413_and_never_reaches_the_backend(proxy, backend):
    answer = proxy(max_request_body="1000").post("/ows/proxy/svc", b"x" * 1001, status=413)
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"
    assert backend[0].seen == []


def test_client_credentials_are_not_forwarded_and_forwarding_headers_are_set(proxy, backend):
    proxy().get("/ows/proxy/svc", headers={"Cookie": "s=1", "Authorization": "Bearer t", "Access-Token": "t",
                                           "X-Ssl-Client-Verify": "SUCCESS", "X-Custom": "kept"},
                extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    seen = backend[0].seen[0]["headers"]
    assert not {"HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_ACCESS_TOKEN", "HTTP_X_SSL_CLIENT_VERIFY"} & set(seen)
    assert seen["HTTP_X_CUSTOM"] == "kept"
    assert seen["HTTP_HOST"] == urlsplit(backend[1]).netloc


def test_extra_path_resolves_beside_the_registered_endpoint(proxy, backend):
    answer = proxy().get("/ows/proxy/svc/outputs/job%201/f.nc?dl=1")
    assert (answer.json["path"], answer.json["query"]) == ("/outputs/job 1/f.nc", "dl=1")


@pytest.mark.parametrize("path", [
    "/ows/proxy/svc/%2e%2e/secret", "/ows/proxy/svc/outputs/../../secret", "/ows/proxy/svc/..%252fsecret",
    "/ows/proxy/svc//elsewhere.example/x", "/ows/proxy/svc/a%5c..%5csecret",
])
def test_extra_path_leaving_the_service_directory_is_400(proxy, backend, path):
    answer = proxy().get(path, status=400)
    assert _report(answer).get("locator") == "extra_path"
    assert backend[0].seen == []


@pytest.mark.parametrize("method", ["put", "delete", "patch", "options"])
def test_methods_other_than_get_head_and_post_are_405(proxy, method):
    answer = getattr(proxy(), method)("/ows/proxy/svc", status=405)
    assert _report(answer).get("exceptionCode") == "OperationNotSupported"


def test_head_is_forwarded_as_head_with_the_backend_headers(proxy, backend):
    answer = proxy("/teapot").head("/ows/proxy/svc", status=418)
    assert backend[0].seen[-1]["method"] == "HEAD"
    assert answer.headers["X-Custom"] == "yes"
    assert answer.body == b""


def test_head_of_an_xml_document_sends_no_length_that_rewriting_would_change(proxy, backend):
    answer = proxy("/xml").head("/ows/proxy/svc")
    assert backend[0].seen[-1]["method"] == "HEAD"
    assert answer.content_type == "text/xml"
    assert "Content-Length" not in answer.headers


def test_unknown_service_is_404(proxy):
    answer = proxy().get("/ows/proxy/nothing?service=WPS&request=GetCapabilities", status=404)
    assert (_report(answer).get("exceptionCode"), _report(answer).get("locator")) == \
        ("InvalidParameterValue", "service_name")


@pytest.mark.parametrize("content_type", [
    "text/xml", "application/xml; charset=utf-8", "application/wps+xml", "application/vnd.ogc.wms_xml",
    "application/vnd.ogc.se_xml", "application/gml+xml; version=3.2", "application/vnd.ogc.gml",
])
def test_backend_links_in_xml_point_at_twitcher(proxy, content_type):
    answer = proxy("/xml").get(f"/ows/proxy/svc?ct={content_type.replace('+', '%2B')}")
    root = etree.fromstring(answer.body)
    assert root.find("op").get("{http://www.w3.org/1999/xlink}href") == \
        "http://localhost/ows/proxy/svc?service=WPS&a=1"
    assert root.find("out").get("href") == "http://localhost/ows/proxy/svc/outputs/f.nc"
    assert root.find("ext").get("href") == "http://elsewhere.example/wps"
    assert answer.headers["Content-Length"] == str(len(answer.body))


def test_backend_urls_outside_the_service_directory_are_emptied(proxy, backend):
    """Registered at /alias/x/xml, outputs at /outputs/: the proxy cannot lead there, and the
    client must not learn the backend's address from them."""
    answer = proxy("/alias/x/xml").get("/ows/proxy/svc")
    root = etree.fromstring(answer.body)
    assert root.find("op").get("{http://www.w3.org/1999/xlink}href") == \
        "http://localhost/ows/proxy/svc?service=WPS&a=1"
    assert root.find("out").get("href") == ""
    assert backend[1].encode() not in answer.body


def _answer_headers(proxy, headers, service_path="/wps", path="/ows/proxy/svc/answer-headers"):
    app = proxy(service_path)
    return app.get(path, headers={"X-Answer-Headers": json.dumps(headers)}).headers


def test_backend_location_headers_in_every_form_lead_through_the_proxy_or_are_dropped(proxy, backend):
    host = backend[1][len("http://"):]
    headers = _answer_headers(proxy, [["Location", "outputs/a.nc"]])
    assert headers["Location"] == "http://localhost/ows/proxy/svc/outputs/a.nc"
    headers = _answer_headers(proxy, [["Location", f"//{host}/jobs/1"], ["Content-Location", "/jobs/2"]])
    assert headers["Location"] == "http://localhost/ows/proxy/svc/jobs/1"
    assert headers["Content-Location"] == "http://localhost/ows/proxy/svc/jobs/2"
    headers = _answer_headers(proxy, [["Location", "/outputs/a.nc"], ["Link", '</outputs/b>; rel="next"']],
                              service_path="/alias/x/wps")
    assert "Location" not in headers and "Link" not in headers


def test_backend_link_headers_are_parsed_and_each_target_rewritten(proxy, backend):
    headers = _answer_headers(proxy, [["Link", f'<{backend[1]}/jobs?page=2>; rel="next"; title="a, <b>; c", '
                                               '<https://docs.example/x>; rel=describedby']])
    assert headers["Link"] == ('<http://localhost/ows/proxy/svc/jobs?page=2>; rel="next"; title="a, <b>; c", '
                               '<https://docs.example/x>; rel=describedby')


def test_purl_decides_the_public_base_of_rewritten_links(proxy):
    answer = proxy("/xml", data={"purl": "https://public.example/emu"}).get("/ows/proxy/svc")
    assert etree.fromstring(answer.body).find("out").get("href") == "https://public.example/emu/outputs/f.nc"


def test_compressed_xml_is_rewritten_and_sent_uncompressed(proxy):
    answer = proxy("/gzip").get("/ows/proxy/svc", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in answer.headers
    assert etree.fromstring(answer.body).find("out").get("href") == "http://localhost/ows/proxy/svc/outputs/f.nc"


def test_compressed_xml_over_the_rewrite_limit_streams_decoded_and_whole(proxy):
    answer = proxy("/gzip-big", rewrite_max_bytes="65536").get("/ows/proxy/svc",
                                                                headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in answer.headers
    assert len(answer.body) > 4 << 20
    assert answer.body.endswith(b"x" * 1000 + b"</pad></r>")


def test_xml_in_an_encoding_twitcher_cannot_decode_passes_unchanged(proxy):
    app = proxy("/br").app  # the WSGI app itself: webtest would try to decode the answer
    answer = Request.blank("/ows/proxy/svc", headers={"Accept-Encoding": "br"}).get_response(app)
    assert answer.headers["Content-Encoding"] == "br"
    assert answer.body == b"\x8b\x00\x80not-really-brotli"


@pytest.mark.parametrize("charset", ["x-unknown", "undefined", "idna"])
def test_xml_in_a_charset_python_cannot_use_passes_unchanged_not_500(proxy, backend, charset):
    answer = proxy("/xml").get(f"/ows/proxy/svc?ct=text/xml;charset={charset}")
    assert answer.status_int == 200
    assert answer.body.startswith(b'<r xmlns:xlink="http://www.w3.org/1999/xlink">')
    assert answer.headers["Content-Length"] == str(len(answer.body))


def test_json_is_not_rewritten(proxy, backend):
    answer = proxy("/echo").get("/ows/proxy/svc?u=" + backend[1])
    assert answer.json["query"] == "u=" + backend[1]


@pytest.mark.parametrize("query", ["", "chunked"])
def test_xml_over_the_rewrite_limit_streams_unchanged(proxy, backend, query):
    answer = proxy("/big-xml", rewrite_max_bytes="2048").get(f"/ows/proxy/svc?{query}")
    assert backend[1].encode() + b"/outputs/f.nc" in answer.body
    assert answer.body.endswith(b"x" * 5000 + b"</pad></r>")


def test_redirect_to_the_backend_leads_through_the_proxy(proxy):
    answer = proxy("/redirect").get("/ows/proxy/svc", status=302)
    assert answer.headers["Location"] == "http://localhost/ows/proxy/svc/outputs/f.nc"


def test_backend_status_and_end_to_end_headers_pass_through(proxy):
    answer = proxy("/teapot").get("/ows/proxy/svc", status=418)
    assert answer.body == b"short and stout"
    assert answer.headers["X-Custom"] == "yes"
    assert answer.headers.getall("Set-Cookie") == ["a=1", "b=2"]


@pytest.fixture
def tls_backend(tmp_path):
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate; yields (base URL, cert path)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server asks for)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", str(cert)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize(("verify", "status"), [(True, 502), ("ca", 200), ("ca-dir", 200), ("other-dir", 502),
                                                (False, 200)])
def test_tls_verification_is_per_service(make_app, store, tls_backend, tmp_path, verify, status):
    base_url, cert = tls_backend
    if verify in ("ca-dir", "other-dir"):  # a hashed CA directory (openssl rehash), with or without our CA
        directory = tmp_path / verify
        directory.mkdir()
        if verify == "ca-dir":
            (directory / "backend.pem").write_bytes(Path(cert).read_bytes())
        subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True, timeout=60)
        verify = str(directory)
    elif verify == "ca":
        verify = cert
    store.save_service(service_from_registration(base_url + "/wps", {"name": "tls", "verify": verify}))
    answer = make_app(ows_security="false").get("/ows/proxy/tls", status=status)
    if status == 200:
        assert answer.body == b"hello"
    else:
        assert _report(answer).get("exceptionCode") == "NoApplicableCode"
