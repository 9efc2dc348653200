"""CORS under the protected path, for web portals and notebooks that call Twitcher from a browser.

Switched on by ``twitcher.cors_allow_origins`` (``*`` or a list of origins). Twitcher is then the
one authority for CORS under the protected path:

* a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here,
  ``204``, without a token and without reaching the security tween or any backend: it carries no
  credentials and asks only what the real request may look like;
* every other answer under the path gets the CORS headers, refusals included (a browser hides a
  401 without them from the page, which then cannot tell "log in" from "network error"); the
  backend's own ``Access-Control-*`` headers are replaced, as two ``Allow-Origin`` values would
  make the browser reject the answer.

With ``*`` credentials are never allowed (the CORS standard forbids it, and tokens travel in
headers anyway); with a list the request's origin is echoed when listed, with ``Vary: Origin``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from .ows.exceptions import path_is_under

log = logging.getLogger(__name__)

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Access-Token, Content-Type, Prefer, Accept, Accept-Language, Content-Crs, If-Match"
EXPOSE_HEADERS = "Location, Link, WWW-Authenticate, Content-Location, Preference-Applied, Content-Crs"
#: Seconds a browser may reuse a preflight answer.
MAX_AGE = "600"


class CorsPolicy:
    """Which origins may read answers, and the headers that say so."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = tuple(origins) == ("*",)
        self.origins = frozenset(o.lower() for o in origins)

    def allowed(self, origin: Optional[str]) -> Optional[str]:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None when it is not allowed."""
        if self.any:
            return "*"
        if origin and origin.lower() in self.origins:
            return origin
        return None

    def headers(self, origin: Optional[str]) -> list:
        """The CORS headers of an answer to ``origin`` (without ``Allow-Origin`` for a stranger)."""
        headers = [] if self.any else [("Vary", "Origin")]
        allow = self.allowed(origin)
        if allow is not None:
            headers.append(("Access-Control-Allow-Origin", allow))
            if not self.any:
                headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers


def is_preflight(environ: dict) -> bool:
    return (environ["REQUEST_METHOD"] == "OPTIONS" and "HTTP_ORIGIN" in environ
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ)


def preflight_response(policy: CorsPolicy, origin: Optional[str]) -> Response:
    response = Response(status=204)
    for key, value in policy.headers(origin):
        response.headers.add(key, value)
    if policy.allowed(origin) is not None:
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE
    return response


def add_cors_headers(response: Response, policy: CorsPolicy, origin: Optional[str]) -> None:
    """Replace any ``Access-Control-*`` headers of ``response`` by ours."""
    for key in [k for k in response.headers if k.lower().startswith("access-control-")]:
        del response.headers[key]
    for key, value in policy.headers(origin):
        response.headers.add(key, value)
    if policy.allowed(origin) is not None:
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def cors_tween_factory(handler, registry):
    settings = registry.twitcher
    policy = CorsPolicy(settings.cors_allow_origins)
    prefix = settings.protected_path

    def cors_tween(request):
        environ = request.environ
        if not path_is_under(request.path_info, prefix):
            return handler(request)
        origin = environ.get("HTTP_ORIGIN")
        if is_preflight(environ):
            return preflight_response(policy, origin)
        response = handler(request)
        add_cors_headers(response, policy, origin)
        return response

    return cors_tween


def includeme(config) -> None:
    # Over EXCVIEW: the exception view renders refusals inside this tween, so they get the
    # headers too, and a preflight is answered before the security tween (under EXCVIEW) sees it.
    if config.registry.twitcher.cors_allow_origins:
        config.add_tween("twitcher.cors.cors_tween_factory", over=EXCVIEW)
