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


_string = json.encoder.encode_basestring_ascii
_second = [-1, ""]  # the last whole second formatted, and its text: most lines share it


def iso_time(epoch: float) -> str:
    """UTC time with milliseconds, ISO 8601: ``2026-01-31T12:00:00.123Z``."""
    whole = int(epoch)
    cached = _second
    if cached[0] != whole:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        cached[0] = whole
    return f"{cached[1]}.{int((epoch - whole) * 1000):03d}Z"


def _text(value: Optional[str]) -> str:
    """A JSON string (or null) of at most :data:`_MAX_TEXT` characters, escaped to ASCII."""
    if value is None:
        return "null"
    return _string(value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT])


def _number(value: Optional[float]) -> str:
    return "null" if value is None else repr(round(value, 3))


def access_line(entry) -> str:
    """One JSON line for a finished request (an :class:`twitcher.ops.tween.Entry`).

    Written field by field rather than through ``json.dumps`` of a dict: a third of the cost,
    for the same JSON (strings escaped by the json module's own encoder).
    """
    decision = entry.decision
    if decision is not None:
        service, service_type, ows_service, ows_request, route, token = (
            decision.service_name, decision.service_type, decision.ows_service, decision.ows_request,
            decision.route, decision.token)
    else:
        service, service_type, ows_service, ows_request, route, token = (entry.service_name,) + (None,) * 5
    upstream = None if entry.upstream_seconds is None else entry.upstream_seconds * 1000
    return (
        f'{{"time":"{iso_time(entry.wall)}","method":{_text(entry.method)},"service":{_text(service)},'
        f'"service_type":{_text(service_type)},"ows_service":{_text(ows_service)},'
        f'"ows_request":{_text(ows_request)},"route":{_text(route)},"decision":{_text(entry.outcome)},'
        f'"status":{int(entry.status)},"bytes":{int(entry.bytes)},"duration_ms":{_number(entry.seconds * 1000)},'
        f'"upstream_ms":{_number(upstream)},"upstream_error":{_text(entry.upstream_error)},'
        f'"token":{_text(token)},"remote_addr":{_text(entry.remote_addr)},'
        f'"forwarded_for":{_text(entry.forwarded_for)}}}'
    )


class LineBatchHandler(logging.StreamHandler):
    """A stream handler that writes the lines of a batch together: one ``write`` for many lines.

    ``logging.StreamHandler`` writes and flushes after every record: a system call per request,
    and with it the GIL handed to a request thread and taken back, line after line (measured:
    a third of the access log's cost under load). Lines wait here until :func:`flush_handlers`
    at the end of each batch (:mod:`twitcher.ops.batch`, every half second), or until
    :data:`MAX_PENDING` characters have gathered; every line is still its own record for the
    logging machinery (filters, levels). ``production.ini`` uses it for the access log; any
    other handler works too, at its own pace.
    """

    #: Characters of waiting lines at which they are written without waiting for the batch's end.
    MAX_PENDING = 64 * 1024

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._pending: list = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                text, self._pending, self._size = "".join(self._pending), [], 0
                self.stream.write(text)
            super().flush()
        finally:
            self.release()


def flush_handlers() -> None:
    """Flush the access log's handlers: the end of a batch of lines (see :class:`LineBatchHandler`)."""
    for handler in log.handlers:
        handler.flush()


def write(entry) -> None:
    """Log ``entry``'s line at INFO, unless the logger is configured to drop it.

    The record is made directly (``makeRecord`` + ``handle``, which applies the logger's filters
    and handlers as ``log.info`` does): ``log.info`` would also look up its caller's source
    line on every request, a third of the cost of writing the line, for a field no one reads here.
    """
    if log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(LOGGER_NAME, logging.INFO, __file__, 0, access_line(entry), None, None))
