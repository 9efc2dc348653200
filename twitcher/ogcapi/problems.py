"""RFC 7807 problem documents: how Twitcher's refusals read to an OGC API client.

OGC API clients expect JSON errors (OGC API - Processes uses RFC 7807 itself), not the XML
ExceptionReport of OWS. The refusal is the same :class:`~twitcher.exceptions.OWSException` either
way; only its rendering differs, and :mod:`twitcher.ows.exceptions` stays the one place that
picks the rendering (:func:`wants_problem`).
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Optional

from pyramid.response import Response

from ..exceptions import OWSException
from . import OGCAPI

PROBLEM_CONTENT_TYPE = "application/problem+json"
_JSON_TYPES = ("application/json", "application/problem+json", "application/geo+json")


def problem_document(exc: OWSException) -> dict:
    """The RFC 7807 members for ``exc``; ``type`` is ``about:blank``, so ``title`` is the status
    phrase, and the OWS ``code``/``locator`` ride along as extension members."""
    try:
        title = HTTPStatus(exc.status).phrase
    except ValueError:
        title = "Error"
    document = {"type": "about:blank", "title": title, "status": exc.status, "detail": exc.text,
                "code": exc.code}
    if exc.locator:
        document["locator"] = exc.locator
    return document


def problem_response(exc: OWSException) -> Response:
    """The answer for ``exc`` as ``application/problem+json``, with ``WWW-Authenticate`` on 401."""
    body = json.dumps(problem_document(exc)).encode("utf-8")
    response = Response(body=body, status=exc.status)
    response.headers["Content-Type"] = PROBLEM_CONTENT_TYPE
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="twitcher"'
    return response


def wants_problem(service_type: Optional[str], accept: Optional[str]) -> bool:
    """True when a refusal should be a problem document rather than an ExceptionReport.

    The request's service decides when it is known (an ``ogcapi`` service, or not). When it is
    not (an unknown service name), an ``Accept`` header that asks for JSON and not for XML does.
    """
    if service_type is not None:
        return service_type == OGCAPI
    accept = (accept or "").lower()
    return any(t in accept for t in _JSON_TYPES) and "xml" not in accept
