"""The tween that watches requests under the protected path for the metrics and the access log.

It reads what was decided from the :class:`~twitcher.ops.record.Decision` the security tween
left in the environ, what the backend took from :data:`~twitcher.ops.record.UPSTREAM_KEY`, and
what was answered from the response; it decides nothing itself. A streamed body is counted as it
goes out, and the request is finished (logged, observed) when the server closes the body, so the
duration and bytes of a download are those of the whole download.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional

from pyramid.tweens import EXCVIEW

from ..exceptions import AccessDenied, BadGateway, GatewayTimeout, OWSException
from ..ows.exceptions import path_is_under
from ..proxy.upstream import UpstreamError
from .batch import Batch
from .metrics import operation_class
from .record import DECISION_KEY, DENIED, ERROR, INVALID, UNCHECKED, UPSTREAM_KEY, Decision

log = logging.getLogger(__name__)

#: Words in libcurl's message of a failed connection that mean TLS failed, not the connection.
_TLS_WORDS = ("SSL", "TLS", "certificate")


def outcome_of(decision: Optional[Decision], exception: Optional[BaseException]) -> str:
    """allowed / denied / invalid / error: the recorded decision, or the kind of refusal."""
    if decision is None:
        return UNCHECKED
    if decision.outcome is not None:
        return decision.outcome
    if isinstance(exception, AccessDenied) or getattr(exception, "status", None) == 403:
        return DENIED
    if isinstance(exception, OWSException) and 400 <= exception.status < 500:
        return INVALID
    return ERROR


def upstream_error(exception: Optional[BaseException], upstream: Optional[list], status: int) -> Optional[str]:
    """The kind of a failed backend exchange (connect, timeout, tls, 5xx, broken), or None."""
    if upstream is None:
        return None
    if isinstance(exception, GatewayTimeout):
        return "timeout"
    if isinstance(exception, BadGateway):
        if upstream[1] is not None:
            return "broken"  # headers came, then the body broke off
        cause = exception.__context__  # raised "from None": the libcurl error is still here
        detail = cause.detail if isinstance(cause, UpstreamError) else ""
        return "tls" if any(word in detail for word in _TLS_WORDS) else "connect"
    if status >= 500 and exception is None:
        return "5xx"
    return None


class Entry:
    """One request being answered: what the metrics and the access log need when it is done."""

    __slots__ = ("wall", "started", "method", "service_name", "remote_addr", "forwarded_for", "decision",
                 "outcome", "status", "bytes", "seconds", "upstream_seconds", "upstream_answered",
                 "upstream_error")

    def __init__(self, environ: dict, service_name: Optional[str]) -> None:
        self.wall = time.time()
        self.started = time.perf_counter()
        self.method = environ.get("REQUEST_METHOD")
        self.service_name = service_name
        self.remote_addr = environ.get("REMOTE_ADDR")
        self.forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        self.decision: Optional[Decision] = None
        self.outcome = UNCHECKED
        self.status = 500
        self.bytes = 0
        self.seconds = 0.0
        self.upstream_seconds: Optional[float] = None
        #: The backend's answer headers arrived (whatever its status).
        self.upstream_answered = False
        self.upstream_error: Optional[str] = None

    def judge(self, request, status: int, exception: Optional[BaseException]) -> None:
        """Read the decision and the backend exchange, once the handler has answered."""
        environ = request.environ
        self.decision = environ.get(DECISION_KEY)
        self.outcome = outcome_of(self.decision, exception)
        self.status = status
        upstream = environ.get(UPSTREAM_KEY)
        if upstream is not None:
            self.upstream_answered = upstream[1] is not None
            end = upstream[1] if self.upstream_answered else time.perf_counter()
            self.upstream_seconds = end - upstream[0]
        self.upstream_error = upstream_error(exception, upstream, status)


class Watcher:
    """What a finished request is reported to: the metrics, the access log, or both."""

    def __init__(self, metrics, access_log: bool) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.batch = metrics.batch if metrics is not None else Batch()
        self._children: dict = {}

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.batch.count(self.metrics.in_flight, 1)

    def finish(self, entry: Entry) -> None:
        entry.seconds = time.perf_counter() - entry.started
        try:
            if self.metrics is not None:
                self.batch.later(self._observe, entry)  # labels worked out in the flushing thread
            if self.access_log:
                self.batch.log(entry)
        except Exception:  # a report must never break an answer already given
            log.exception("could not record a finished request")

    def _observe(self, entry: Entry) -> None:
        metrics = self.metrics
        batch = metrics.batch
        batch.count(metrics.in_flight, -1)
        decision = entry.decision
        service_type = (decision.service_type if decision else None) or "unknown"
        operation = operation_class(decision.ows_request if decision else None,
                                    decision.route if decision else None, service_type != "unknown")
        # One dict lookup instead of prometheus-client's labels() (a third of the cost of a
        # request's metrics); the label sets are bounded, so is this cache.
        key = (service_type, operation, entry.outcome, entry.status // 100, entry.bytes > 0,
               entry.upstream_answered, entry.upstream_error)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._children_of(key)
        count, seconds, sent, upstream, error = children
        batch.count(count)
        batch.observe(seconds, entry.seconds)
        if sent is not None:
            batch.count(sent, entry.bytes)
        if upstream is not None:  # the time to the answer's headers, a 5xx answer's too
            batch.observe(upstream, entry.upstream_seconds)
        if error is not None:
            batch.count(error)

    def _children_of(self, key: tuple) -> tuple:
        service_type, operation, outcome, status_class, sent, upstream, error = key
        metrics = self.metrics
        return (metrics.requests.labels(service_type, operation, outcome, f"{status_class}xx"),
                metrics.request_seconds.labels(service_type, operation),
                metrics.response_bytes.labels(service_type) if sent else None,
                metrics.upstream_seconds.labels(service_type) if upstream else None,
                metrics.upstream_errors.labels(error) if error else None)


class CountedBody:
    """A response's ``app_iter`` that counts the bytes going out and reports the request on ``close()``."""

    def __init__(self, app_iter, entry: Entry, watcher: Watcher) -> None:
        self.app_iter = app_iter
        self.entry = entry
        self.watcher = watcher
        self.finished = False

    def __iter__(self) -> Iterator[bytes]:
        entry = self.entry
        try:
            for chunk in self.app_iter:
                entry.bytes += len(chunk)
                yield chunk
        except Exception:
            if entry.upstream_answered and entry.upstream_error is None:
                entry.upstream_error = "broken"
            raise

    def close(self) -> None:
        try:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()
        finally:
            if not self.finished:
                self.finished = True
                self.watcher.finish(self.entry)


def ops_tween_factory(handler, registry):
    """Watch every request under ``twitcher.protected_path``; pass everything else untouched."""
    settings = registry.twitcher
    prefix = settings.protected_path
    watcher = Watcher(getattr(registry, "ops_metrics", None) if settings.metrics else None, settings.access_log)
    registry.ops_batch = watcher.batch  # tests flush it to read the access log at once

    def ops_tween(request):
        path = request.path_info
        if not path_is_under(path, prefix):
            return handler(request)
        rest = path[len(prefix) + 1:].split("/", 2)
        entry = Entry(request.environ, rest[1] if len(rest) > 1 and rest[0] == "proxy" else None)
        watcher.start()
        try:
            response = handler(request)
        except BaseException as exc:  # not rendered by the exception view: the server answers 500
            entry.judge(request, 500, exc)
            watcher.finish(entry)
            raise
        entry.judge(request, response.status_int, getattr(request, "exception", None))
        app_iter = response.app_iter
        if isinstance(app_iter, (list, tuple)):
            entry.bytes = sum(len(chunk) for chunk in app_iter)
            watcher.finish(entry)
        else:
            response.app_iter = CountedBody(app_iter, entry, watcher)
        return response

    return ops_tween


def includeme(config) -> None:
    if config.registry.twitcher.metrics:
        config.include(".metrics")
    # Over EXCVIEW: the exception view below has already turned every OWSException (the security
    # tween's refusals, the proxy's 502/504) into the answer the client gets, so this tween sees
    # the real status and can still read the exception that caused it (request.exception).
    config.add_tween("twitcher.ops.tween.ops_tween_factory", over=EXCVIEW)
