"""The JSON access log (``twitcher.access_log = true``): one line per request under the protected path.

Written with the standard library's :mod:`logging` to the logger ``twitcher.access``, each record's
message one JSON object, so that operators route it with the ini's logging sections like any
other log (``production.ini`` sends it to stdout with ``format = %(message)s``). Why not
structlog: one ``json.dumps`` per request is all the structure needed, the ini already
configures logging, and a dependency less is one upgrade less.

Fields (``docs/operations.rst``): never the token (a fingerprint), never the query string or the
path (a token may travel in either), never a body.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Optional

#: The logger of the access log; route it by this name.
LOGGER_NAME = "twitcher.access"
log = logging.getLogger(LOGGER_NAME)
#: Longest client-sent text (request name, X-Forwarded-For) copied into a line.
_MAX_TEXT = 256


def _clip(text: Optional[str]) -> Optional[str]:
    return text if text is None or len(text) <= _MAX_TEXT else text[:_MAX_TEXT]


_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_second = [-1, ""]  # the last whole second formatted, and its text: most lines share it


def iso_time(epoch: float) -> str:
    """UTC time with milliseconds, ISO 8601: ``2026-01-31T12:00:00.123Z``."""
    whole = int(epoch)
    cached = _second
    if cached[0] != whole:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        cached[0] = whole
    return f"{cached[1]}.{int((epoch - whole) * 1000):03d}Z"


def access_line(entry) -> str:
    """One JSON line for a finished request (an :class:`twitcher.ops.tween.Entry`)."""
    decision = entry.decision
    return _encode({
        "time": iso_time(entry.wall),
        "method": entry.method,
        "service": decision.service_name if decision else entry.service_name,
        "service_type": decision.service_type if decision else None,
        "ows_service": _clip(decision.ows_service) if decision else None,
        "ows_request": _clip(decision.ows_request) if decision else None,
        "route": decision.route if decision else None,
        "decision": entry.outcome,
        "status": entry.status,
        "bytes": entry.bytes,
        "duration_ms": round(entry.seconds * 1000, 3),
        "upstream_ms": None if entry.upstream_seconds is None else round(entry.upstream_seconds * 1000, 3),
        "upstream_error": entry.upstream_error,
        "token": decision.token if decision else None,
        "remote_addr": entry.remote_addr,
        "forwarded_for": _clip(entry.forwarded_for),
    })


def write(entry) -> None:
    """Log ``entry``'s line at INFO, unless the logger is configured to drop it.

    The record is made directly (``makeRecord`` + ``handle``, which applies the logger's filters
    and handlers as ``log.info`` does): ``log.info`` would also look up its caller's source
    line on every request, a third of the cost of writing the line, for a field no one reads here.
    """
    if log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(LOGGER_NAME, logging.INFO, __file__, 0, access_line(entry), None, None))
