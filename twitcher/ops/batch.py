"""A queue between the request threads and the work of metrics and the access log (see :class:`Batch`)."""
from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
import time
from collections import deque
from typing import Callable, Dict, List

from . import accesslog

log = logging.getLogger(__name__)

#: Seconds between two applications of the queued observations to prometheus-client's values.
FLUSH_INTERVAL = 0.5


_COUNT, _OBSERVE, _CALL = "count", "observe", "call"


class Batch:
    """Observations and access-log lines queued by the request threads, handled by one thread.

    Applying an observation costs a lock and a write per value (memory-mapped files in the
    multi-process mode: a request touched a dozen), and a log line its formatting and the
    logging machinery: together more than a tenth of a small request, measured in the request's
    thread, where the code ran with caches full of the request's own work (the same line costs a
    quarter of that in a loop that does nothing else). Queued (one ``deque.append``) and handled
    every :data:`FLUSH_INTERVAL` seconds, equal observations are added up first (a thousand
    requests of one kind become one write per value) and lines are written one after another.
    A scrape applies its own process' queue before it answers; other workers' numbers, and the
    access log, are at most :data:`FLUSH_INTERVAL` seconds late. At exit the queue is flushed;
    a worker that is killed loses what it had queued.
    """

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
        self.interval = interval
        self.queue: deque = deque()
        self._lock = threading.RLock()  # one flush at a time; a flush may queue more (later())
        self._running = False
        if hasattr(os, "register_at_fork"):
            # A forked child has no flushing thread, and what the parent queued is the parent's.
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self.queue = deque()
        self._lock = threading.RLock()
        self._running = False

    def count(self, value, amount: float = 1) -> None:
        """Add ``amount`` to a counter or gauge child."""
        self.queue.append((_COUNT, value, amount))
        if not self._running:
            self._start()

    def observe(self, histogram, amount: float) -> None:
        """Observe ``amount`` in a histogram child."""
        self.queue.append((_OBSERVE, histogram, amount))
        if not self._running:
            self._start()

    def later(self, function: Callable[[object], None], argument: object) -> None:
        """Call ``function(argument)`` in the flushing thread (it may queue observations itself)."""
        self.queue.append((_CALL, function, argument))
        if not self._running:
            self._start()

    def log(self, entry) -> None:
        """Write ``entry``'s access-log line (:func:`twitcher.ops.accesslog.write`)."""
        self.later(accesslog.write, entry)

    def _start(self) -> None:
        """Start the flushing thread, once per process (again in a forked child)."""
        with self._lock:
            if self._running:
                return
            self._running = True
            threading.Thread(target=self._run, name="twitcher-ops", daemon=True).start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:  # never let the flusher die: the next round tries again
                log.exception("could not apply queued metrics or write the access log")

    def flush(self) -> None:
        """Apply every queued observation now."""
        with self._lock:
            counts: Dict[object, float] = {}
            observed: Dict[object, List[float]] = {}
            queue = self.queue
            while True:  # until empty, including what the calls below queue
                try:
                    kind, value, amount = queue.popleft()
                except IndexError:
                    break
                if kind is _COUNT:
                    counts[value] = counts.get(value, 0) + amount
                elif kind is _OBSERVE:
                    observed.setdefault(value, []).append(amount)
                else:
                    try:
                        value(amount)
                    except Exception:  # one bad record must not lose the others' counts
                        log.exception("could not record a finished request")
            for value, amount in counts.items():
                if amount:
                    value.inc(amount)
            for histogram, amounts in observed.items():
                _observe_all(histogram, amounts)
            accesslog.flush_handlers()  # the lines of this batch, written together


def _observe_all(histogram, amounts: List[float]) -> None:
    """Observe many amounts with one write per bucket and one for the sum.

    Uses the histogram child's bucket bounds and values (prometheus-client's ``_upper_bounds``,
    ``_buckets``, ``_sum``); a version without them gets one ``observe`` per amount.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    per_bucket: Dict[int, int] = {}
    for amount in amounts:
        index = bisect.bisect_left(bounds, amount)  # the first bound >= amount, as observe() picks
        per_bucket[index] = per_bucket.get(index, 0) + 1
    total.inc(sum(amounts))
    for index, n in per_bucket.items():
        buckets[index].inc(n)
