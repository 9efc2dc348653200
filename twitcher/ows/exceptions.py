"""The one place where errors become OWS ``ExceptionReport`` responses (or, for OGC API
services, RFC 7807 problem documents).

OWS clients (OWSLib, QGIS, portals) understand an OGC ``ExceptionReport`` with a real HTTP status;
they do not understand HTML error pages or tracebacks. The exception views registered here make
sure that every error under the protected path is answered that way, and that nothing anywhere
leaks a stack trace.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Optional

from lxml import etree
from pyramid.httpexceptions import HTTPException
from pyramid.response import Response
from pyramid.view import exception_view_config

from ..exceptions import (
    MalformedRequest,
    OperationNotSupported,
    OWSException,
    StoreDown,
    StoreUnavailable,
)
from ..ogcapi.problems import problem_response, wants_problem

log = logging.getLogger(__name__)

#: The request attribute where the security tween leaves the service it resolved for a proxy
#: request (see :mod:`twitcher.tweens`); here it decides how a refusal is rendered.
SERVICE_ATTR = "ows_service"

OWS_NS = "http://www.opengis.net/ows/1.1"
XML_CONTENT_TYPE = "text/xml"


#: Distinct (code, locator, text) reports kept serialised. Refusals repeat the same few texts
#: (a 401 for a missing token is the most frequent answer of all); texts that quote the request,
#: such as an unknown service name, merely cycle through the cache, which stays this size.
REPORT_CACHE_SIZE = 512


def exception_report(exc: OWSException) -> bytes:
    """Serialise ``exc`` as an OWS 1.1 ``ExceptionReport`` (version 1.0.0)."""
    return _report_bytes(exc.code, exc.locator, exc.text)


@lru_cache(maxsize=REPORT_CACHE_SIZE)
def _report_bytes(code: str, locator: Optional[str], text: str) -> bytes:
    report = etree.Element(f"{{{OWS_NS}}}ExceptionReport", nsmap={"ows": OWS_NS},
                           attrib={"version": "1.0.0", "{http://www.w3.org/XML/1998/namespace}lang": "en"})
    exception = etree.SubElement(report, f"{{{OWS_NS}}}Exception", exceptionCode=code)
    if locator:
        exception.set("locator", locator)
    etree.SubElement(exception, f"{{{OWS_NS}}}ExceptionText").text = text
    return etree.tostring(report, xml_declaration=True, encoding="UTF-8")


def ows_exception_response(exc: OWSException) -> Response:
    """The HTTP answer to an OWS client for ``exc``, with the status the design table gives."""
    response = Response(body=exception_report(exc), status=exc.status,
                        content_type=XML_CONTENT_TYPE, charset="utf-8")
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="twitcher"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def error_response(exc: OWSException, request) -> Response:
    """The answer for ``exc`` in the client's vocabulary: a problem document for OGC API
    services (:func:`twitcher.ogcapi.problems.wants_problem`), an ExceptionReport otherwise."""
    service = getattr(request, SERVICE_ATTR, None)
    if wants_problem(service.type if service is not None else None, request.environ.get("HTTP_ACCEPT")):
        return problem_response(exc)
    return ows_exception_response(exc)


def path_is_under(path: str, prefix: str) -> bool:
    """True when ``path`` is ``prefix`` or below it by whole segment (``/owsfoo`` is not under ``/ows``)."""
    return path == prefix or path.startswith(prefix + "/")


def is_ows_request(request) -> bool:
    """True for paths under the protected prefix, matched by whole path segment."""
    return path_is_under(request.path_info, request.registry.twitcher.protected_path)


def _http_error_as_ows(exc: HTTPException, method: str) -> OWSException:
    if exc.code == 404:
        return OWSException("No OWS endpoint at this path.", locator="path", status=404)
    if exc.code == 405:
        return OperationNotSupported(f"The HTTP method {method} is not supported here.", locator=method,
                                     status=405)
    if exc.code == 413:
        return OWSException("The request body is too large.", status=413)
    if exc.code < 500:
        return MalformedRequest(exc.title, status=exc.code)
    return OWSException(exc.title, status=exc.code)


@exception_view_config(OWSException)
def ows_exception_view(exc, request) -> Response:
    return error_response(exc, request)


@exception_view_config(StoreUnavailable)
def store_unavailable_view(exc, request) -> Response:
    log.error("store unavailable while serving %s %s", request.method, request.path_info)
    if is_ows_request(request):
        return error_response(StoreDown("The token store is not available; try again later."), request)
    return Response(json_body={"error": "store unavailable"}, status=503)


@exception_view_config(HTTPException)
def http_exception_view(exc, request):
    """Pyramid's own HTTP errors (404, 405, ...) as ExceptionReports under the protected path."""
    if is_ows_request(request) and exc.code >= 400:
        return error_response(_http_error_as_ows(exc, request.method), request)
    return exc


@exception_view_config(Exception)
def unexpected_error_view(exc, request) -> Response:
    """Anything unplanned: logged with its traceback here, answered without one."""
    log.exception("unexpected error serving %s %s", request.method, request.path_info)
    if is_ows_request(request):
        return error_response(OWSException("Internal error in the security proxy.", status=500), request)
    return Response(json_body={"error": "internal error"}, status=500)


def includeme(config) -> None:
    config.scan(__name__)
