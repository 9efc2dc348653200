"""The embedded store: one SQLite file (or memory), so Twitcher runs with nothing else installed.

One connection per process, opened lazily and reopened after a fork, guarded by a lock so that
waitress' threads share it safely. WAL mode and a busy timeout let several processes (several
Twitcher instances, gunicorn workers) share one file: a token written by one is read by all.
Services are read once per process and generation (:mod:`twitcher.store.generation`), tokens on
every request.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..exceptions import InvalidArgument, ServiceExists, StoreUnavailable
from ..jobs import JobRecord
from ..services import Service, service_from_record
from ..tokens import AccessToken, utcnow
from .base import EXPIRED_GRACE_SECONDS, Store
from .generation import Generation

log = logging.getLogger(__name__)

#: Job ids looked up in one query (a /jobs page; SQLite allows 999 parameters).
_MAX_IDS = 500
#: How long a writer waits for another process' lock before the store counts as unavailable.
BUSY_TIMEOUT_SECONDS = 5.0
#: After a failure, how long every request is refused at once before one of them tries again.
RETRY_SECONDS = 1.0
#: Services a process keeps read (:mod:`twitcher.store.generation`); more, and it starts afresh.
MAX_CACHED_SERVICES = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    environ TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tokens_expires_at ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS services_url ON services (url);
CREATE TABLE IF NOT EXISTS revocation_ids (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS revocation_ids_revoked ON revocation_ids (revoked, expires_at);
CREATE TABLE IF NOT EXISTS jobs (
    service TEXT NOT NULL,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (service, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_expires_at ON jobs (expires_at);
"""


def sqlite_path(db_url: str) -> str:
    """``sqlite://`` is memory; ``sqlite:///rel/path`` and ``sqlite:////abs/path`` are files."""
    rest = db_url[len("sqlite://"):]
    if not rest:
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"expected sqlite:// or sqlite:///path, got {db_url!r}")
    return rest[1:]


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


class SQLiteStore(Store):
    def __init__(self, db_url: str):
        self.path = sqlite_path(db_url)
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._pid: Optional[int] = None
        self._state = threading.Lock()  # guards the three below, never held while waiting for SQLite
        self._failing = self._probing = False
        self._failed_at = 0.0
        self._generation = Generation(self.path)
        #: name -> (generation it was read under, service); see twitcher/store/generation.py
        self._services: Dict[str, Tuple[bytes, Service]] = {}

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False,
                               isolation_level=None)
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            columns = [row[1] for row in conn.execute("PRAGMA table_info(tokens)")]
            if "subject" not in columns:  # a file of 0.5.0 before subjects: add the column
                conn.execute("ALTER TABLE tokens ADD COLUMN subject TEXT")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The process' connection, under the lock; database errors become StoreUnavailable.

        A store that failed is not waited for again by every request: for ``RETRY_SECONDS`` each
        request is refused at once, then one request probes it while the others are still refused.
        Without this, one connection per process means that each request queues behind the one
        before for SQLite's own wait (ten seconds for a read of a locked WAL index), and a short
        outage becomes minutes of hanging requests.
        """
        probe = self._admit()
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_SECONDS):
            self._failed("its connection stayed busy")
            raise StoreUnavailable("the token store is busy")
        try:
            if self._failing and not probe:  # it failed while this request waited for the lock
                raise StoreUnavailable("the token store failed a moment ago")
            try:
                if self._conn is None or self._pid != os.getpid():
                    # After a fork the parent's connection must not be used: open our own.
                    self._conn = self._connect()
                    self._pid = os.getpid()
                yield self._conn
            except (sqlite3.Error, OSError) as exc:
                if isinstance(exc, sqlite3.IntegrityError):
                    self._answered()
                    raise
                # OSError: the file's folder cannot be created (a file is in the way, no permission).
                log.error("SQLite store %s failed: %s", self.path, exc)
                self._failed(str(exc))
                raise StoreUnavailable(f"the token store did not answer: {exc}") from exc
            except BaseException:
                self._answered()
                raise
            self._answered()
        finally:
            self._lock.release()

    def _admit(self) -> bool:
        """Refuse at once while a failed store waits for its retry; True for the request that probes it."""
        if not self._failing:
            return False
        with self._state:
            if not self._failing:
                return False
            if self._probing or time.monotonic() < self._failed_at + RETRY_SECONDS:
                raise StoreUnavailable("the token store failed a moment ago")
            self._probing = True  # this request tries the store; the others are refused meanwhile
            return True

    def _failed(self, why: str) -> None:
        with self._state:
            self._failing, self._probing = True, False
            self._failed_at = time.monotonic()

    def _answered(self) -> None:
        if self._failing:
            with self._state:
                self._failing = self._probing = False
            log.warning("SQLite store %s answers again", self.path)

    # -- tokens -------------------------------------------------------------------------

    def save_token(self, token: AccessToken) -> None:
        now = _epoch(utcnow())
        try:
            with self._db() as db:
                db.execute("INSERT INTO tokens (digest, expires_at, environ, revoked, subject) VALUES (?, ?, ?, ?, ?)",
                           (token.digest, _epoch(token.expires_at), json.dumps(dict(token.environ)),
                            int(token.revoked), token.subject))
                db.execute("DELETE FROM tokens WHERE expires_at < ?", (now - EXPIRED_GRACE_SECONDS,))
        except sqlite3.IntegrityError:
            raise InvalidArgument("a token with this digest is stored already") from None

    def fetch_token(self, digest: str) -> Optional[AccessToken]:
        with self._db() as db:
            row = db.execute("SELECT expires_at, environ, revoked, subject FROM tokens WHERE digest = ?",
                             (digest,)).fetchone()
        if row is None:
            return None
        return AccessToken(digest=digest,
                           expires_at=datetime.fromtimestamp(row[0], timezone.utc),
                           environ=json.loads(row[1]), revoked=bool(row[2]), subject=row[3])

    def revoke_token(self, digest: str) -> bool:
        with self._db() as db:
            cursor = db.execute("UPDATE tokens SET revoked = 1 WHERE digest = ? AND revoked = 0 AND expires_at > ?",
                                (digest, _epoch(utcnow())))
        return cursor.rowcount > 0

    def revoke_all_tokens(self) -> int:
        with self._db() as db:
            cursor = db.execute("UPDATE tokens SET revoked = 1 WHERE revoked = 0 AND expires_at > ?",
                                (_epoch(utcnow()),))
        return cursor.rowcount

    def purge_expired_tokens(self) -> int:
        with self._db() as db:
            cursor = db.execute("DELETE FROM tokens WHERE expires_at <= ?", (_epoch(utcnow()),))
        return cursor.rowcount

    # -- revocation ids of signed tokens ------------------------------------------------

    def record_signed_token(self, revocation_id: str, expires_at: datetime) -> None:
        now = _epoch(utcnow())
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO revocation_ids (id, expires_at, revoked) VALUES (?, ?, 0)",
                       (revocation_id, _epoch(expires_at)))
            db.execute("DELETE FROM revocation_ids WHERE expires_at < ?", (now - EXPIRED_GRACE_SECONDS,))

    def revoke_ids(self, revocation_ids: Sequence[str], expires_at: datetime) -> int:
        count = 0
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for rid in revocation_ids:
                    # An id recorded already keeps the longer of both lifetimes.
                    cursor = db.execute(
                        "INSERT INTO revocation_ids (id, expires_at, revoked) VALUES (?, ?, 1) "
                        "ON CONFLICT (id) DO UPDATE SET revoked = 1, "
                        "expires_at = MAX(expires_at, excluded.expires_at) WHERE revoked = 0",
                        (rid, _epoch(expires_at)))
                    count += cursor.rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return count

    def revoke_all_signed_tokens(self) -> int:
        with self._db() as db:
            cursor = db.execute("UPDATE revocation_ids SET revoked = 1 WHERE revoked = 0 AND expires_at > ?",
                                (_epoch(utcnow()),))
        return cursor.rowcount

    def revoked_ids(self) -> List[str]:
        with self._db() as db:
            rows = db.execute("SELECT id FROM revocation_ids WHERE revoked = 1 AND expires_at > ? ORDER BY id",
                              (_epoch(utcnow()),)).fetchall()
        return [row[0] for row in rows]

    # -- services -----------------------------------------------------------------------

    def save_service(self, service: Service, overwrite: bool = True) -> Service:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT"
        try:
            with self._db() as db:
                db.execute(f"{verb} INTO services (name, url, record) VALUES (?, ?, ?)",
                           (service.name, service.url, json.dumps(service.as_struct())))
        except sqlite3.IntegrityError:
            raise ServiceExists(f"a service named {service.name!r} is registered already "
                                "(pass overwrite=True to replace it)") from None
        self._generation.change()
        return service

    def fetch_by_name(self, name: str) -> Optional[Service]:
        generation = self._generation.current()
        cached = self._services.get(name)
        if cached is not None and generation is not None and cached[0] == generation:
            return cached[1]
        with self._db() as db:
            row = db.execute("SELECT record FROM services WHERE name = ?", (name,)).fetchone()
        service = service_from_record(json.loads(row[0])) if row else None
        if service is not None and generation is not None:
            if len(self._services) >= MAX_CACHED_SERVICES:
                self._services.clear()
            self._services[name] = (generation, service)
        return service

    def fetch_by_url(self, url: str) -> Optional[Service]:
        with self._db() as db:
            row = db.execute("SELECT record FROM services WHERE url = ? ORDER BY name LIMIT 1",
                             (url,)).fetchone()
        return service_from_record(json.loads(row[0])) if row else None

    def list_services(self) -> List[Service]:
        with self._db() as db:
            rows = db.execute("SELECT record FROM services ORDER BY name").fetchall()
        return [service_from_record(json.loads(row[0])) for row in rows]

    def delete_service(self, name: str) -> bool:
        with self._db() as db:
            cursor = db.execute("DELETE FROM services WHERE name = ?", (name,))
        self._generation.change()
        return cursor.rowcount > 0

    def clear_services(self) -> int:
        with self._db() as db:
            cursor = db.execute("DELETE FROM services")
        self._generation.change()
        return cursor.rowcount

    # -- jobs ---------------------------------------------------------------------------

    def save_job(self, job: JobRecord) -> bool:
        now = _epoch(utcnow())
        with self._db() as db:
            # An expired record of the same id gives way; an unexpired one is kept (one owner).
            # One statement, so one write transaction per recorded job: a DELETE and an INSERT in
            # autocommit were two, a fifth of the CPU of a proxied Execute.
            cursor = db.execute(
                "INSERT INTO jobs (service, job_id, owner, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (service, job_id) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at WHERE jobs.expires_at <= ?",
                (job.service, job.job_id, job.owner, _epoch(job.expires_at), now))
        return cursor.rowcount > 0

    def fetch_jobs(self, service: str, job_ids: Sequence[str]) -> Dict[str, JobRecord]:
        ids = list(dict.fromkeys(job_ids))[:_MAX_IDS]
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        with self._db() as db:
            rows = db.execute(f"SELECT job_id, owner, expires_at FROM jobs WHERE service = ? AND expires_at > ? "  # noqa: S608 - placeholders only
                              f"AND job_id IN ({marks})", (service, _epoch(utcnow()), *ids)).fetchall()
        return {row[0]: JobRecord(service, row[0], row[1], datetime.fromtimestamp(row[2], timezone.utc))
                for row in rows}

    def purge_expired_jobs(self) -> int:
        with self._db() as db:
            cursor = db.execute("DELETE FROM jobs WHERE expires_at <= ?", (_epoch(utcnow()),))
        return cursor.rowcount

    # -- housekeeping -------------------------------------------------------------------

    def ping(self) -> None:
        with self._db() as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
