"""The services' generation: eight bytes beside the SQLite file that change whenever a service does.

Every proxied request looks its service up. With the store's connection shared by a worker's
threads, each SQLite call hands the GIL to another thread and waits to get it back; under load
that costs more than the query (``docs/benchmark.rst``, "Where the time still goes"). Services
change rarely, so each process keeps the ones it has read, tagged with the generation it read
them under, and asks SQLite again only when the generation has changed.

The generation lives in a file mapped into every process that opens the store (``<db>-generation``,
beside SQLite's own ``-wal`` and ``-shm``): reading it is a memory read, no system call, and
a change made by any process on the machine (every Twitcher sharing a WAL-mode SQLite file runs
on it) is seen by the next read of all. Writers change it *after* their write is committed, so a
reader that read the old generation and then the old row has cached it under a generation that
is gone already. The value is random, not a counter: two writers need no lock between them,
and a cached generation never comes back.

Only services are cached: a token is read from the store on every request, so that a revoked
token is refused on the next one and a store that fails refuses protected requests at once.
Where the file cannot be made (a read-only folder), nothing is cached.
"""
from __future__ import annotations

import logging
import mmap
import os
from typing import Optional

log = logging.getLogger(__name__)

SIZE = 8
SUFFIX = "-generation"


class Generation:
    """The current generation of a store's services (None: unknown, do not cache)."""

    def __init__(self, db_path: str):
        self._map: Optional[mmap.mmap] = None
        self._local: Optional[bytes] = None
        if db_path == ":memory:":
            self._local = os.urandom(SIZE)  # a memory store lives in one process
            return
        path = db_path + SUFFIX
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < SIZE:
                    os.ftruncate(fd, SIZE)  # zeros: a generation like any other
                self._map = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            log.warning("services are not cached: %s cannot be used (%s)", path, exc)

    def current(self) -> Optional[bytes]:
        if self._map is not None:
            return self._map[:SIZE]
        return self._local

    def change(self) -> None:
        """Call after a committed change of the services."""
        value = os.urandom(SIZE)
        if self._map is not None:
            self._map[:SIZE] = value
        elif self._local is not None:
            self._local = value
