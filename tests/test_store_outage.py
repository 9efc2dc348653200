"""The SQLite store during an outage: refused at once, not waited for by every request; back by itself.

The outage is real: another process holds the locks of the database's WAL index, as the soak
test (``make soak``) does, so SQLite itself fails a read after about ten seconds of retries.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from twitcher.exceptions import StoreUnavailable
from twitcher.store import sqlite
from twitcher.store.sqlite import SQLiteStore

LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 8, 120, os.SEEK_SET)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def store(tmp_path):
    """A file store that has answered once (its WAL index exists), closed after the test."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/twitcher.sqlite")
    store.ping()
    yield store
    store.close()


def test_a_failed_store_is_refused_at_once_then_probed_again(store, monkeypatch):
    monkeypatch.setattr(sqlite, "RETRY_SECONDS", 60)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, store.path + "-shm"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        with pytest.raises(StoreUnavailable):
            store.fetch_by_name("x")  # SQLite's own wait: about ten seconds
        refused = []

        def ask():
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.fetch_by_name("x")
            refused.append(time.monotonic() - start)

        threads = [threading.Thread(target=ask) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(refused) == 16 and max(refused) < 1.0, refused
    finally:
        locker.stdin.close()
        locker.wait(timeout=10)
    monkeypatch.setattr(sqlite, "RETRY_SECONDS", 0)
    assert store.fetch_by_name("x") is None  # the next request probes, and it answers again
