"""The token check's cost against the size of the store: in-process, SQLite."""
from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import statistics
import time
from pathlib import Path
from typing import List, Tuple

from twitcher.store import open_store
from twitcher.tokens import check_token, new_token, token_digest


def fill_token_store(db_url: str, path: Path, size: int, probes: int) -> Tuple[List[str], float]:
    """A store of ``size`` tokens; returns ``probes`` clear-text tokens known to it and the fill time.

    The probes go in through the public API (``new_token`` + ``save_token``). The other records
    are inserted in bulk on a plain connection to the same file, because a million ``save_token``
    calls (one commit each) take minutes: their digests are spread evenly over the whole key space
    (as SHA-256 digests are) and inserted in order, in one transaction, without a journal.
    """
    start = time.perf_counter()
    store = open_store(db_url)
    store.ping()  # creates the schema
    store.close()
    fillers = size - probes
    step = (1 << 256) // max(fillers, 1)
    expires = time.time() + 3600 * 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MB, for this bulk connection only
        with conn:
            conn.executemany("INSERT INTO tokens (digest, expires_at, environ, revoked) VALUES (?, ?, '{}', 0)",
                             ((f"{i * step:064x}", expires) for i in range(fillers)))
        conn.execute("PRAGMA journal_mode = WAL")  # back to what the store uses
    store = open_store(db_url)
    tokens = []
    for _ in range(probes):
        token, record = new_token(2)
        store.save_token(record)
        tokens.append(token)
    store.close()
    # Measure the steady state: a thousand fresh commits would otherwise be read out of the WAL,
    # which doubles the lookup cost on a large store until SQLite's next automatic checkpoint.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return tokens, time.perf_counter() - start


def token_check_cost(workdir: Path, size: int, lookups: int, probes: int = 1000) -> dict:
    """Median and p99 microseconds of ``fetch_token`` + ``check_token`` on a store of ``size`` tokens."""
    path = workdir / f"tokens-{size}.sqlite"
    db_url = f"sqlite:///{path}"
    tokens, fill_seconds = fill_token_store(db_url, path, size, min(probes, size))
    store = open_store(db_url)
    digests = [token_digest(t) for t in tokens]
    for digest in digests:  # warm the process' connection and the page cache once
        check_token(store.fetch_token(digest))
    samples = []
    rng = secrets.SystemRandom()
    for _ in range(lookups):
        digest = rng.choice(digests)
        t0 = time.perf_counter_ns()
        check_token(store.fetch_token(digest))
        samples.append((time.perf_counter_ns() - t0) / 1000)
    store.close()
    for suffix in ("", "-wal", "-shm", "-generation"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    samples.sort()
    return {"size": size, "fill_seconds": round(fill_seconds, 2), "lookups": lookups,
            "median_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1)}
