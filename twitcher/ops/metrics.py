"""Prometheus metrics at ``/metrics`` (``twitcher.metrics = true``), readable from a few addresses.

Labels are bounded by construction: service *types* (registered by admins, from a fixed list),
operation classes from a fixed list (anything else is ``other``), decisions, status classes and
error kinds. Never a user, token, client address, job id, raw path or service *name*: names are
admin-controlled, but every one multiplies each histogram's series, and the access log has them.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (``pserve
production.ini`` sets one up, see :mod:`twitcher.ops.runner`), every worker writes its values
there and a scrape of any worker adds them all up; files of dead workers' gauges are dropped at
the next scrape. Without it, each process reports its own numbers.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from typing import Callable, Iterable, Optional, Tuple

from pyramid.response import Response

from ..exceptions import ConfigurationError
from .batch import Batch

log = logging.getLogger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Request names that are their own operation class; any other request name is ``other``.
OPERATIONS = frozenset({
    "getcapabilities", "describeprocess", "execute", "getstatus", "getresult", "dismiss",  # WPS
    "getmap", "getfeatureinfo", "getlegendgraphic",  # WMS
    "getfeature", "describefeaturetype", "getpropertyvalue", "transaction",  # WFS
    "getcoverage", "describecoverage",  # WCS
})
#: A request below a service root (status documents, outputs): no OWS request to name.
EXTRA_PATH = "path"
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "tls", "5xx", "broken")
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2)
_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")
#: The store methods whose latency is measured (every method of TokenStore and ServiceStore).
STORE_OPERATIONS = ("save_token", "fetch_token", "revoke_token", "revoke_all_tokens", "purge_expired_tokens",
                    "save_service", "fetch_by_name", "fetch_by_url", "list_services", "delete_service",
                    "clear_services", "ping")


def operation_class(ows_request: Optional[str], route: Optional[str], judged: bool) -> str:
    """The bounded ``operation`` label: an OGC API route template, a known request name, or a class.

    ``judged``: the security tween got as far as the service type; a request refused before
    that (unknown service, unreadable request) is ``none``.
    """
    if route:
        return route  # a template from the OGC API routes table: bounded by that table
    if ows_request:
        return ows_request if ows_request in OPERATIONS else "other"
    return EXTRA_PATH if judged else "none"


class Metrics:
    """Twitcher's metric families, in one registry per application (tests build many apps)."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigurationError("twitcher.metrics needs prometheus-client: pip install 'twitcher[prod]'") \
                from None
        self._prom = prom
        self.multiproc_dir = os.environ.get(MULTIPROC_VARIABLE) or None
        registry = None if self.multiproc_dir else prom.CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.requests = prom.Counter(
            "twitcher_requests", "Requests under the protected path, by what was decided and answered.",
            ("service_type", "operation", "decision", "code"), registry=registry)
        self.request_seconds = prom.Histogram(
            "twitcher_request_duration_seconds", "Time from the request to the last byte of the answer.",
            ("service_type", "operation"), buckets=_REQUEST_BUCKETS, registry=registry)
        self.upstream_seconds = prom.Histogram(
            "twitcher_upstream_duration_seconds", "Time from sending to a backend to its answer's headers.",
            ("service_type",), buckets=_REQUEST_BUCKETS, registry=registry)
        self.upstream_errors = prom.Counter(
            "twitcher_upstream_errors", "Failed backend exchanges: connect, timeout, tls, 5xx, broken.",
            ("kind",), registry=registry)
        self.response_bytes = prom.Counter(
            "twitcher_response_bytes", "Bytes of answer bodies sent to clients.", ("service_type",),
            registry=registry)
        self.in_flight = prom.Gauge(
            "twitcher_requests_in_flight", "Requests under the protected path being answered now.",
            registry=registry, multiprocess_mode="livesum")
        self.tokens_issued = prom.Counter("twitcher_tokens_issued", "Tokens saved to the store.",
                                          registry=registry)
        self.tokens_revoked = prom.Counter("twitcher_tokens_revoked", "Tokens revoked in the store.",
                                           registry=registry)
        self.store_seconds = prom.Histogram(
            "twitcher_store_operation_seconds", "Latency of token and service store operations.",
            ("operation",), buckets=_STORE_BUCKETS, registry=registry)
        for kind in UPSTREAM_ERROR_KINDS:  # present at 0 from the start, so that rate() works at once
            self.upstream_errors.labels(kind)
        self.batch = Batch()

    def exposition(self) -> Tuple[bytes, str]:
        """The Prometheus text of every worker (multi-process) or of this process, and its media type."""
        prom = self._prom
        self.batch.flush()
        if self.multiproc_dir is None:
            return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        self._forget_dead_workers(multiprocess)
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
        return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

    def _forget_dead_workers(self, multiprocess) -> None:
        """Drop the live-gauge files of workers that are gone (their in-flight count is over).

        Counters and histograms of dead workers stay: their counts happened.
        """
        for name in os.listdir(self.multiproc_dir):
            match = _GAUGE_FILE.match(name)
            if match and not _alive(int(match.group(1))):
                multiprocess.mark_process_dead(int(match.group(1)), self.multiproc_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TimedStore:
    """The store, with the latency of every operation measured and tokens issued and revoked counted.

    Everything else (``close``) goes to the wrapped store unchanged.
    """

    def __init__(self, store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        for name in STORE_OPERATIONS:
            setattr(self, name, self._timed(name, getattr(store, name)))

    def _timed(self, name: str, method: Callable) -> Callable:
        histogram = self._metrics.store_seconds.labels(name)
        observe = self._metrics.batch.observe
        issued, revoked = self._metrics.tokens_issued, self._metrics.tokens_revoked

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            finally:
                observe(histogram, time.perf_counter() - started)
            if name == "save_token":
                issued.inc()
            elif name == "revoke_token" and result:
                revoked.inc()
            elif name == "revoke_all_tokens" and result:
                revoked.inc(result)
            return result

        timed.__name__ = name
        timed.__doc__ = method.__doc__
        return timed

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def _networks(words: Iterable[str]):
    return tuple(ipaddress.ip_network(word, strict=False) for word in words)


def metrics_view(request) -> Response:
    """The Prometheus text, to the addresses of ``twitcher.metrics_allow`` only.

    The address is the direct peer's (``REMOTE_ADDR``). A request relayed by a front server
    (it carries ``X-Forwarded-For`` or ``Forwarded``) is refused: its peer is the front server,
    whichever client sent it. Scrape Twitcher directly.
    """
    allowed = request.registry.ops_metrics_allow
    environ = request.environ
    relayed = "HTTP_X_FORWARDED_FOR" in environ or "HTTP_FORWARDED" in environ
    try:
        peer = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
    except ValueError:
        peer = None
    if relayed or peer is None or not any(peer in network for network in allowed):
        return Response("Forbidden\n", status=403, content_type="text/plain")
    body, content_type = request.registry.ops_metrics.exposition()
    response = Response(body=body, status=200)
    response.headers["Content-Type"] = content_type
    response.cache_control = "no-store"
    return response


def includeme(config) -> None:
    """The metrics, the store wrapper that feeds them, and the ``/metrics`` route."""
    registry = config.registry
    metrics = registry.ops_metrics = Metrics()
    registry.ops_metrics_allow = _networks(registry.twitcher.metrics_allow)
    if metrics.multiproc_dir is None:
        log.info("metrics of this process only (no %s): with several workers, each reports its own",
                 MULTIPROC_VARIABLE)
    registry.store = TimedStore(registry.store, metrics)
    config.add_route("ops_metrics", "/metrics")
    config.add_view(metrics_view, route_name="ops_metrics")
