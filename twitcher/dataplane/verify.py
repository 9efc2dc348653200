"""The verify endpoint for nginx ``auth_request``: ``<prefix>/verify/<name>[/<extra>]``.

nginx sends its auth subrequest as a GET without a body, whatever the client sent; a verify
endpoint that judged the subrequest would take every POST for a read. So this one judges the
request nginx *describes*: the method from ``X-Original-Method``, the query from the query part
of ``X-Original-URI``, the path ``<prefix>/proxy/<name>[/<extra>]`` from its own path (the
generated configuration maps ``/ows/proxy/...`` to ``/ows/verify/...``), and the client's headers
(tokens), which nginx passes to the subrequest. The judgement is :func:`twitcher.tweens.decide`,
the one the proxy uses: token sources, strict parsing, public requests, job owners.

Answers: ``200`` with the backend URL (token parameters removed, registered keys winning, as the
proxy builds it) in ``X-Twitcher-Upstream``, ``X-Twitcher-Private: 1`` when the request needed a
token, and ``X-Twitcher-Data: 1`` when the Python plane would hand the answer to nginx as well
(:func:`twitcher.dataplane.accel.is_data`); or the refusal, as the proxy would render it, with
status ``401`` or ``403`` (``auth_request`` knows no other refusal: a ``400`` or ``404`` becomes
``403``, the original status in ``X-Twitcher-Status``). A store that does not answer is ``503``,
which nginx turns into ``500``: closed.

Refused with ``403``: any request that does not come from the configured front
(:mod:`twitcher.dataplane.front`), and a request without ``X-Original-Method`` that is not itself
a safe ``GET``/``HEAD``. A ``POST`` to an OWS service root is judged by its body, which a
subrequest does not carry: refused too; send such requests through Twitcher (X-Accel).
"""
from __future__ import annotations

import io
import logging

from pyramid.request import Request
from pyramid.response import Response

from ..exceptions import InvalidArgument, OWSException
from ..ogcapi import OGCAPI
from ..ops.record import ALLOWED, DECISION_KEY
from ..ows.exceptions import error_response
from ..services import check_name
from ..tweens import ACCESS_ATTR, PROXY, VERIFY, OWSSecurity, decide
from .accel import is_data
from .front import from_front

log = logging.getLogger(__name__)

ORIGINAL_METHOD = "HTTP_X_ORIGINAL_METHOD"
ORIGINAL_URI = "HTTP_X_ORIGINAL_URI"
_SAFE = ("GET", "HEAD")


class VerifyRefused(OWSException):
    """A verify request that is not judged at all (not from the front, no method header)."""

    code = "NoApplicableCode"

    def __init__(self, text: str) -> None:
        super().__init__(text, status=403)


def described_environ(request, prefix: str) -> dict:
    """The WSGI environ of the request nginx describes, apart from the verify request's own."""
    environ = {k: v for k, v in request.environ.items() if not k.startswith("webob.")}
    method = environ.get(ORIGINAL_METHOD, "").strip().upper()
    if not method:
        if request.method not in _SAFE:
            raise VerifyRefused("The verify request carries no X-Original-Method header.")
        method = request.method
    original_uri = environ.get(ORIGINAL_URI)
    query = original_uri.partition("?")[2] if original_uri is not None else environ.get("QUERY_STRING", "")
    own_root = f"{prefix}/{VERIFY}/"
    environ.update({
        "REQUEST_METHOD": method,
        "PATH_INFO": f"{prefix}/{PROXY}/" + environ.get("PATH_INFO", "")[len(own_root):],
        "QUERY_STRING": query,
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(b""),
    })
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return environ


def _extra_path(environ: dict, root: str):
    """The extra path below ``root`` as the router would give it (UTF-8 text), or None."""
    path = environ.get("PATH_INFO", "")
    if not path.startswith(root + "/"):
        return None
    return path[len(root) + 1:].encode("latin-1").decode("utf-8", "replace")


def _is_ogcapi(store, name: str) -> bool:
    try:
        check_name(name)
    except InvalidArgument:
        return False
    service = store.fetch_by_name(name)
    return service is not None and service.type == OGCAPI


def verify_view(request) -> Response:
    """Judge the request nginx describes; 200 with the backend URL, or the refusal."""
    # Imported here: proxy.view imports this package for its hand-off.
    from ..proxy.view import upstream_url

    registry = request.registry
    settings = registry.twitcher
    if not from_front(request.environ, settings):
        log.warning("verify request from %s refused: not from the configured front", request.remote_addr)
        raise VerifyRefused("The verify endpoint answers the front server only.")
    environ = described_environ(request, settings.protected_path)
    described = Request(environ)
    described.registry = registry
    try:
        if environ["REQUEST_METHOD"] == "POST" and "extra_path" not in request.matchdict \
                and not _is_ogcapi(registry.store, request.matchdict["service_name"]):
            raise VerifyRefused("A POST to an OWS service is judged by its body: it must go through Twitcher.")
        decision = decide(described, registry.dataplane_security)
        service = decision.service
        access = getattr(described, ACCESS_ATTR)
        root = f"{settings.protected_path}/{PROXY}/{service.name}"
        extra_path = _extra_path(environ, root) if decision.target.extra else None
        url = upstream_url(service, environ.get("QUERY_STRING", ""), extra_path, access.token)
    except OWSException as exc:
        response = error_response(exc, described)
        if exc.status not in (401, 403) and exc.status < 500:
            response.status = 403
            response.headers["X-Twitcher-Status"] = str(exc.status)
        return response
    finally:
        if DECISION_KEY in environ:  # ops: the verify request is recorded with what was decided
            request.environ[DECISION_KEY] = environ[DECISION_KEY]
    environ[DECISION_KEY].outcome = ALLOWED
    data = is_data(described, service, extra_path)
    return Response(status=200, headerlist=[
        ("X-Twitcher-Upstream", url),
        ("X-Twitcher-Private", "1" if access.protected else "0"),
        ("X-Twitcher-Data", "1" if data else "0"),
        ("Cache-Control", "no-store"),
        ("Content-Length", "0"),
    ])


def includeme(config) -> None:
    prefix = config.registry.twitcher.protected_path
    config.registry.dataplane_security = OWSSecurity(config.registry.twitcher)
    config.add_route("ows_verify", f"{prefix}/{VERIFY}/{{service_name}}")
    config.add_route("ows_verify_extra", f"{prefix}/{VERIFY}/{{service_name}}/{{extra_path:.*}}")
    config.add_view(verify_view, route_name="ows_verify")
    config.add_view(verify_view, route_name="ows_verify_extra")
