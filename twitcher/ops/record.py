"""What the security tween and the proxy leave in the WSGI environ for metrics and the access log.

Small on purpose: the tween that decides writes a :class:`Decision`, the proxy view the times of
its backend exchange, and :mod:`twitcher.ops.tween` reads both after the answer. Nothing here
judges a request; it only remembers what was judged.
"""
from __future__ import annotations

from typing import Optional

from ..tokens import fingerprint

#: Environ key of the :class:`Decision` of a request under the protected path.
DECISION_KEY = "twitcher.decision"
#: Environ key of ``[started, headers_received]`` (``time.perf_counter()``) of the backend exchange;
#: the second is None while waiting, and stays None when the exchange failed.
UPSTREAM_KEY = "twitcher.upstream"

ALLOWED = "allowed"
DENIED = "denied"
INVALID = "invalid"
ERROR = "error"
#: No decision was recorded: the security tween is off (``twitcher.ows_security = false``).
UNCHECKED = "unchecked"


class Decision:
    """The security tween's findings about one request, filled in as it goes.

    ``outcome`` is :data:`ALLOWED` once the request passed; a refusal leaves it None and the
    exception that refused it says which kind (see :func:`twitcher.ops.tween.outcome_of`).
    ``token`` is a fingerprint (:func:`twitcher.tokens.fingerprint`), never the token.
    ``route`` is the route template of an OGC API request, for the service type ``ogcapi``.
    """

    __slots__ = ("service_name", "service_type", "ows_service", "ows_request", "route", "outcome", "token")

    def __init__(self, service_name: Optional[str] = None) -> None:
        self.service_name = service_name
        self.service_type: Optional[str] = None
        self.ows_service: Optional[str] = None
        self.ows_request: Optional[str] = None
        self.route: Optional[str] = None
        self.outcome: Optional[str] = None
        self.token: Optional[str] = None

    def observe(self, service_type: str, ows, token: Optional[str]) -> None:
        """Note the service type, the OWS request (an ``OWSRequest`` or None) and the token's fingerprint."""
        self.service_type = service_type
        if ows is not None:
            self.ows_service = ows.service
            self.ows_request = (ows.request or "").lower() or None
        if token:
            self.token = fingerprint(token)
