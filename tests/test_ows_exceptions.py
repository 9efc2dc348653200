"""Tests of twitcher.ows.exceptions: every error under the protected path is an OWS ExceptionReport."""
from __future__ import annotations

import pytest
import webtest
from lxml import etree
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden, HTTPRequestEntityTooLarge

from twitcher.exceptions import (
    AccessDenied,
    BadGateway,
    GatewayTimeout,
    InvalidParameterValue,
    MalformedRequest,
    MissingParameterValue,
    OperationNotSupported,
    RequestTooLarge,
    StoreUnavailable,
    UnknownService,
)
from twitcher.ows.exceptions import (
    OWS_NS,
    REPORT_CACHE_SIZE,
    _report_bytes,
    exception_report,
    ows_exception_response,
    path_is_under,
)

NS = {"ows": OWS_NS}


@pytest.mark.parametrize("exc, status, code, locator", [
    (MissingParameterValue("no request", locator="request"), 400, "MissingParameterValue", "request"),
    (InvalidParameterValue("twice", locator="service"), 400, "InvalidParameterValue", "service"),
    (OperationNotSupported("no such", locator="Launch"), 400, "OperationNotSupported", "Launch"),
    (OperationNotSupported("method", locator="method", status=405), 405, "OperationNotSupported", "method"),
    (MalformedRequest("not xml"), 400, "NoApplicableCode", None),
    (RequestTooLarge("too big"), 413, "NoApplicableCode", None),
    (AccessDenied("expired"), 401, "NoApplicableCode", "access_token"),
    (UnknownService("nosuch"), 404, "InvalidParameterValue", "service_name"),
    (BadGateway("down"), 502, "NoApplicableCode", None),
    (GatewayTimeout("slow"), 504, "NoApplicableCode", None),
])
def test_each_error_has_its_status_code_and_locator(exc, status, code, locator):
    response = ows_exception_response(exc)
    assert response.status_int == status
    assert response.content_type == "text/xml"
    root = etree.fromstring(response.body)
    assert root.tag == f"{{{OWS_NS}}}ExceptionReport"
    assert root.get("version") == "1.0.0"
    exception = root.find("ows:Exception", NS)
    assert exception.get("exceptionCode") == code
    assert exception.get("locator") == locator
    assert exception.findtext("ows:ExceptionText", namespaces=NS) == exc.text


def test_only_401_asks_for_a_bearer_token():
    assert ows_exception_response(AccessDenied("no token")).headers["WWW-Authenticate"].startswith("Bearer")
    assert "WWW-Authenticate" not in ows_exception_response(MalformedRequest("x")).headers


def test_a_repeated_refusal_reuses_the_serialised_report():
    first = exception_report(AccessDenied("An access token is required for this request."))
    again = exception_report(AccessDenied("An access token is required for this request."))
    assert again is first
    assert exception_report(AccessDenied("The access token has expired.")) != first


def test_reports_quoting_the_request_do_not_grow_the_cache_without_bound():
    for n in range(REPORT_CACHE_SIZE + 50):
        body = exception_report(UnknownService(f"service-{n}"))
        assert f"service-{n}".encode() in body
    assert _report_bytes.cache_info().currsize <= REPORT_CACHE_SIZE


def test_report_escapes_whatever_the_client_sent():
    body = exception_report(OperationNotSupported("bad <x>&", locator='"><script>'))
    exception = etree.fromstring(body).find("ows:Exception", NS)
    assert exception.get("locator") == '"><script>'
    assert exception.findtext("ows:ExceptionText", namespaces=NS) == "bad <x>&"


@pytest.mark.parametrize("path, prefix, expected", [
    ("/ows", "/ows", True), ("/ows/", "/ows", True), ("/ows/proxy/x", "/ows", True),
    ("/owsfoo", "/ows", False), ("/owsfoo/proxy", "/ows", False), ("/", "/ows", False),
    ("/a/ows", "/ows", False), ("/secure/ows/wps", "/secure/ows", True),
])
def test_path_is_under_matches_whole_segments(path, prefix, expected):
    assert path_is_under(path, prefix) is expected


def _raise(exc):
    def view(request):
        raise exc
    return view


@pytest.fixture
def app(app_settings):
    """Settings and error views only, with views that raise on purpose inside and outside ``/ows``."""
    with Configurator(settings=app_settings) as config:
        config.include("twitcher.settings")
        config.include("twitcher.store")
        config.include("twitcher.ows.exceptions")
        for prefix in ("/ows", "/other"):
            for name, exc in (("store", StoreUnavailable("down")), ("boom", RuntimeError("secret detail")),
                              ("forbidden", HTTPForbidden()), ("large", HTTPRequestEntityTooLarge()),
                              ("ows", InvalidParameterValue("x", locator="request"))):
                config.add_route(f"{prefix}-{name}", f"{prefix}/{name}")
                config.add_view(_raise(exc), route_name=f"{prefix}-{name}")
        return webtest.TestApp(config.make_wsgi_app())


def code_of(response) -> str:
    assert response.content_type == "text/xml"
    return etree.fromstring(response.body).find("ows:Exception", NS).get("exceptionCode")


@pytest.mark.parametrize("path, status, code", [
    ("/ows/store", 503, "NoApplicableCode"),
    ("/ows/boom", 500, "NoApplicableCode"),
    ("/ows/forbidden", 403, "NoApplicableCode"),
    ("/ows/large", 413, "NoApplicableCode"),
    ("/ows/ows", 400, "InvalidParameterValue"),
    ("/ows/nothing-here", 404, "NoApplicableCode"),
    ("/other/ows", 400, "InvalidParameterValue"),
])
def test_errors_under_the_protected_path_are_exception_reports(app, path, status, code):
    response = app.get(path, status=status)
    assert code_of(response) == code
    assert b"secret detail" not in response.body
    assert b"Traceback" not in response.body


@pytest.mark.parametrize("path, status", [("/other/store", 503), ("/other/boom", 500)])
def test_errors_outside_the_protected_path_are_json_without_details(app, path, status):
    response = app.get(path, status=status)
    assert response.content_type == "application/json"
    assert b"secret detail" not in response.body


def test_http_errors_outside_the_protected_path_stay_as_they_are(app):
    response = app.get("/other/forbidden", status=403)
    assert response.content_type != "text/xml"
    app.get("/owsfoo/anything", status=404)
