"""Revoked ids in memory: ours (from our store) and each trusted issuer's (from its published list).

The hot path (:meth:`RevocationLists.check`) reads sets in memory and never waits for the store
or the network. A poller thread refreshes them every ``twitcher.revocation_poll_seconds``.

Why a thread rather than refreshing on a request: a request must never wait for another site
(a slow or dead issuer would stall our clients), and an idle process must keep its lists fresh,
or the first request after a quiet hour would be refused as stale. The thread is started lazily
by the first signed token a process sees, and again in a forked child (gunicorn forks after
loading the app; threads do not survive a fork), so a master process never polls.

Fail closed: a list not refreshed for longer than ``twitcher.revocation_max_age_seconds``
refuses the tokens it governs: our own list governs every signed token (ids revoked here apply
to any issuer's token), an issuer's list governs that issuer's tokens.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Sequence

from ..exceptions import StoreUnavailable
from .biscuit import SignedTokenError

log = logging.getLogger(__name__)

REVOKED = "revoked"
STALE = "revocation list is stale"
#: How long the first signed token of a process waits for the first round of lists.
FIRST_ROUND_WAIT_SECONDS = 5.0
#: Upper bounds for a fetched list: a list is data from another site, so it is bounded.
LIST_MAX_BYTES = 4 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
_REVOCATION_ID = re.compile(r"^[0-9a-f]{16,256}$")

#: ``fetch(url, timeout) -> bytes``; tests may pass their own.
Fetch = Callable[[str, float], bytes]


def http_fetch(url: str, timeout: float) -> bytes:
    """GET ``url``; the body, at most :data:`LIST_MAX_BYTES`. Raises OSError or ValueError."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - http(s) only
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - see twitcher.federation.issuers
        body = answer.read(LIST_MAX_BYTES + 1)
    if len(body) > LIST_MAX_BYTES:
        raise ValueError(f"the list is larger than {LIST_MAX_BYTES} bytes")
    return body


def parse_list(body: bytes, expected_site: str) -> FrozenSet[str]:
    """The ids of a published list, after checking that it is the list of ``expected_site``."""
    document = json.loads(body)
    if not isinstance(document, dict) or document.get("site_id") != expected_site:
        raise ValueError(f"the list is not the list of site {expected_site!r}")
    ids = document.get("revoked")
    if not isinstance(ids, list) or not all(isinstance(i, str) and _REVOCATION_ID.match(i) for i in ids):
        raise ValueError("'revoked' must be a list of hex revocation ids")
    return frozenset(ids)


@dataclass
class _List:
    ids: FrozenSet[str] = frozenset()
    refreshed_at: Optional[float] = None  # time.monotonic() of the last successful refresh


class RevocationLists:
    """The revoked ids this process knows, and how fresh they are."""

    def __init__(self, own_site: Optional[str], sources: Dict[str, str], store, poll_seconds: float,
                 max_age_seconds: float, fetch: Fetch = http_fetch, clock: Callable[[], float] = time.monotonic):
        """``sources`` maps each foreign issuer's site id to the URL of its list."""
        self.own_site = own_site
        self.sources = dict(sources)
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_age = max_age_seconds
        self.fetch = fetch
        self.clock = clock
        self._own = _List()
        self._lists: Dict[str, _List] = {site: _List() for site in self.sources}
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._first_round = threading.Event()

    # -- the hot path -------------------------------------------------------------------

    def check(self, issuer: str, ids: Sequence[str]) -> None:
        """Raise :class:`SignedTokenError` when ``ids`` are revoked or a governing list is stale."""
        self.ensure_polling()
        now = self.clock()
        self._judge(self._own, "our own", ids, now)
        if issuer != self.own_site:
            found = self._lists.get(issuer)
            if found is None:  # a trusted issuer always has a list (settings): fail closed anyway
                raise SignedTokenError(STALE, f"no list for {issuer}")
            self._judge(found, issuer, ids, now)

    def _judge(self, found: _List, label: str, ids: Sequence[str], now: float) -> None:
        if found.refreshed_at is None or now - found.refreshed_at > self.max_age:
            raise SignedTokenError(STALE, label)
        if not found.ids.isdisjoint(ids):
            raise SignedTokenError(REVOKED, f"in {label} list")

    def add_own(self, ids: Iterable[str]) -> None:
        """Ids revoked by this process: effective here at once, in other processes at their next poll."""
        with self._lock:
            self._own = _List(self._own.ids | frozenset(ids), self._own.refreshed_at)

    # -- refreshing ---------------------------------------------------------------------

    def refresh_own(self) -> bool:
        try:
            ids = frozenset(self.store.revoked_ids())
        except StoreUnavailable:
            log.warning("own revocation list not refreshed: store unavailable")
            return False
        with self._lock:
            self._own = _List(ids, self.clock())
        return True

    def refresh_issuer(self, site: str) -> bool:
        url = self.sources[site]
        try:
            ids = parse_list(self.fetch(url, min(FETCH_TIMEOUT_SECONDS, max(1.0, self.poll_seconds))), site)
        except (OSError, ValueError) as exc:  # json errors are ValueErrors
            log.warning("revocation list of %s not refreshed from %s: %s", site, url, exc)
            return False
        with self._lock:
            self._lists[site] = _List(ids, self.clock())
        return True

    def refresh_all(self) -> None:
        self.refresh_own()
        for site in self.sources:
            self.refresh_issuer(site)

    def ensure_polling(self) -> None:
        """Start this process' poller when it has none (first use, or first use after a fork)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._stop = threading.Event()
                self._first_round = threading.Event()
                self._thread = threading.Thread(target=self._run, name="twitcher-revocation-poller", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
        # Outside the lock: the poller takes it to store what it fetched.
        self._first_round.wait(FIRST_ROUND_WAIT_SECONDS)

    def _run(self) -> None:
        stop, first_round = self._stop, self._first_round
        while not stop.is_set():
            try:
                self.refresh_all()
            except Exception:  # never let the poller die: a dead poller makes every list stale
                log.exception("revocation poller round failed")
            first_round.set()
            stop.wait(self.poll_seconds)

    def stop(self) -> None:
        """Stop the poller (tests, shutdown); the next check starts a new one."""
        with self._lock:
            self._stop.set()
            thread, self._thread, self._pid = self._thread, None, None
        if thread is not None:
            thread.join(timeout=FETCH_TIMEOUT_SECONDS + 1)
