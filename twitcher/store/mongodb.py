"""The production store: tokens and services in MongoDB, shared by every Twitcher instance."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence
from urllib.parse import parse_qsl

import pymongo
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from ..exceptions import InvalidArgument, ServiceExists, StoreUnavailable
from ..jobs import JobRecord
from ..services import Service, service_from_record
from ..tokens import AccessToken, utcnow
from .base import EXPIRED_GRACE_SECONDS, Store

log = logging.getLogger(__name__)

#: The database used when the URL names none (``mongodb://host/`` or ``mongodb://host``).
DEFAULT_DATABASE = "twitcher"

#: Client options that make a dead server visible within seconds instead of the driver's
#: 30 s server selection wait. An option given in the URL's query string wins over these.
DEFAULT_TIMEOUTS_MS = {
    "serverSelectionTimeoutMS": 3000,
    "connectTimeoutMS": 3000,
    "socketTimeoutMS": 10000,
}

_SERVICE_FIELDS = ("name", "url", "type", "public", "auth", "purl", "verify")

#: ``client_factory(uri, **options)`` returns a ``pymongo.MongoClient``-like object.
ClientFactory = Callable[..., Any]


def uri_option_names(uri: str) -> frozenset:
    """The lower-cased names of the options in a MongoDB URI (URI options are case-insensitive)."""
    query = uri.partition("?")[2]
    return frozenset(key.lower() for key, _ in parse_qsl(query, keep_blank_values=True))


def client_options(uri: str) -> dict:
    """Keyword options for the client: our timeouts unless the URI sets them, always tz-aware dates.

    pymongo lets keyword arguments override the URI, so a timeout is only passed when the
    operator did not choose one in ``twitcher.db_url``.
    """
    given = uri_option_names(uri)
    options = {name: value for name, value in DEFAULT_TIMEOUTS_MS.items() if name.lower() not in given}
    # Without tz_aware pymongo returns naive datetimes, which cannot be compared with utcnow().
    options["tz_aware"] = True
    options["appname"] = "twitcher"
    return options


def _redacted(uri: str) -> str:
    """The URI's host part only, for log lines: credentials and options never reach a log."""
    rest = uri.split("://", 1)[-1]
    hosts = rest.split("/", 1)[0].split("?", 1)[0]
    return hosts.rpartition("@")[2]


class MongoStore(Store):
    """Tokens in collection ``tokens``, services in ``services``, in the URL's database.

    The client is created on first use and again in a forked child (gunicorn forks after the
    app is loaded; a client must never cross a fork). Indexes are ensured once per process.
    """

    def __init__(self, db_url: str, client_factory: ClientFactory = pymongo.MongoClient):
        self.db_url = db_url
        self._client_factory = client_factory
        self._label = _redacted(db_url)
        self._lock = threading.Lock()
        self._client: Any = None
        self._db: Any = None
        self._pid: Optional[int] = None
        self._indexed = False

    # -- connection ---------------------------------------------------------------------

    def _database(self) -> Any:
        """The process' database handle: client made lazily under the lock, indexes ensured once."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                # In a forked child the parent's client is dropped, not closed: its sockets and
                # monitor threads belong to the parent. Making a client does not wait for the server.
                self._client = self._client_factory(self.db_url, **client_options(self.db_url))
                self._db = self._client.get_default_database(DEFAULT_DATABASE)
                self._pid = os.getpid()
                self._indexed = False
            db = self._db
        if not self._indexed:
            # Outside the lock: while the server is down this waits for the selection timeout, and
            # threads must time out side by side, not one after another. create_index is idempotent.
            self._ensure_indexes(db)
            self._indexed = True
        return db

    @staticmethod
    def _ensure_indexes(db: Any) -> None:
        tokens, services = db["tokens"], db["services"]
        tokens.create_index("digest", unique=True, name="digest_unique")
        # MongoDB deletes a token EXPIRED_GRACE_SECONDS after its expiry, so that in between a
        # client is told "expired" rather than "unknown"; validity never depends on this job.
        tokens.create_index("expires_at", expireAfterSeconds=EXPIRED_GRACE_SECONDS, name="expires_at_ttl")
        revocations = db["revocation_ids"]
        revocations.create_index("id", unique=True, name="id_unique")
        revocations.create_index("expires_at", expireAfterSeconds=EXPIRED_GRACE_SECONDS, name="expires_at_ttl")
        services.create_index("name", unique=True, name="name_unique")
        services.create_index("url", name="url")
        jobs = db["jobs"]
        jobs.create_index([("service", pymongo.ASCENDING), ("job_id", pymongo.ASCENDING)], unique=True,
                          name="service_job_unique")
        # MongoDB deletes expired job records itself; validity is judged at read time all the same.
        jobs.create_index("expires_at", expireAfterSeconds=0, name="expires_at_ttl")

    @contextlib.contextmanager
    def _collection(self, name: str) -> Iterator[Collection]:
        """One collection; driver errors (but duplicate keys) become StoreUnavailable."""
        try:
            yield self._database()[name]
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            # Network errors say which hosts failed and why; other errors may quote a document
            # (token environ data can hold credentials), so only their kind is logged.
            detail = str(exc)[:500] if isinstance(exc, ConnectionFailure) else ""
            log.error("MongoDB store at %s failed: %s %s", self._label, type(exc).__name__, detail)
            raise StoreUnavailable(f"the token store did not answer ({type(exc).__name__})") from exc

    # -- tokens -------------------------------------------------------------------------

    def save_token(self, token: AccessToken) -> None:
        document = {"digest": token.digest, "expires_at": token.expires_at,
                    "environ": dict(token.environ), "revoked": token.revoked, "subject": token.subject}
        try:
            with self._collection("tokens") as tokens:
                tokens.insert_one(document)
        except DuplicateKeyError:
            raise InvalidArgument("a token with this digest is stored already") from None

    def fetch_token(self, digest: str) -> Optional[AccessToken]:
        with self._collection("tokens") as tokens:
            document = tokens.find_one({"digest": digest})
        if document is None:
            return None
        return AccessToken(digest=digest, expires_at=_aware(document["expires_at"]),
                           environ=dict(document.get("environ") or {}), revoked=bool(document.get("revoked")),
                           subject=document.get("subject"))

    def revoke_token(self, digest: str) -> bool:
        with self._collection("tokens") as tokens:
            result = tokens.update_one({"digest": digest, "revoked": False, "expires_at": {"$gt": utcnow()}},
                                       {"$set": {"revoked": True}})
        return result.modified_count > 0

    def revoke_all_tokens(self) -> int:
        with self._collection("tokens") as tokens:
            result = tokens.update_many({"revoked": False, "expires_at": {"$gt": utcnow()}},
                                        {"$set": {"revoked": True}})
        return result.modified_count

    def purge_expired_tokens(self) -> int:
        with self._collection("tokens") as tokens:
            result = tokens.delete_many({"expires_at": {"$lte": utcnow()}})
        return result.deleted_count

    # -- revocation ids of signed tokens ------------------------------------------------

    def record_signed_token(self, revocation_id: str, expires_at: datetime) -> None:
        with self._collection("revocation_ids") as revocations:
            try:
                revocations.update_one({"id": revocation_id},
                                       {"$setOnInsert": {"expires_at": expires_at, "revoked": False}}, upsert=True)
            except DuplicateKeyError:
                pass  # a concurrent insert of the same id: recorded either way

    def revoke_ids(self, revocation_ids: Sequence[str], expires_at: datetime) -> int:
        count = 0
        with self._collection("revocation_ids") as revocations:
            for rid in revocation_ids:
                try:
                    result = revocations.update_one({"id": rid, "revoked": {"$ne": True}},
                                                    {"$set": {"revoked": True}, "$max": {"expires_at": expires_at}},
                                                    upsert=True)
                except DuplicateKeyError:
                    continue  # revoked already (the filter missed it, the upsert hit the index)
                count += 1 if (result.modified_count or result.upserted_id is not None) else 0
        return count

    def revoke_all_signed_tokens(self) -> int:
        with self._collection("revocation_ids") as revocations:
            result = revocations.update_many({"revoked": False, "expires_at": {"$gt": utcnow()}},
                                             {"$set": {"revoked": True}})
        return result.modified_count

    def revoked_ids(self) -> List[str]:
        with self._collection("revocation_ids") as revocations:
            documents = revocations.find({"revoked": True, "expires_at": {"$gt": utcnow()}}, {"id": 1})
            return sorted(document["id"] for document in documents)

    # -- services -----------------------------------------------------------------------

    def save_service(self, service: Service, overwrite: bool = True) -> Service:
        document = service.as_struct()
        try:
            with self._collection("services") as services:
                if not overwrite:
                    services.insert_one(dict(document))
                    return service
                try:
                    services.replace_one({"name": service.name}, document, upsert=True)
                except DuplicateKeyError:
                    # Two concurrent upserts of one new name: the loser's insert hits the unique
                    # index; by now the document exists, so replacing it again cannot collide.
                    services.replace_one({"name": service.name}, document, upsert=True)
        except DuplicateKeyError:
            raise ServiceExists(f"a service named {service.name!r} is registered already "
                                "(pass overwrite=True to replace it)") from None
        return service

    def fetch_by_name(self, name: str) -> Optional[Service]:
        with self._collection("services") as services:
            document = services.find_one({"name": name})
        return _service(document) if document else None

    def fetch_by_url(self, url: str) -> Optional[Service]:
        with self._collection("services") as services:
            documents = list(services.find({"url": url}).sort("name", pymongo.ASCENDING).limit(1))
        return _service(documents[0]) if documents else None

    def list_services(self) -> List[Service]:
        with self._collection("services") as services:
            documents = list(services.find().sort("name", pymongo.ASCENDING))
        return [_service(document) for document in documents]

    def delete_service(self, name: str) -> bool:
        with self._collection("services") as services:
            return services.delete_one({"name": name}).deleted_count > 0

    def clear_services(self) -> int:
        with self._collection("services") as services:
            return services.delete_many({}).deleted_count

    # -- jobs ---------------------------------------------------------------------------

    def save_job(self, job: JobRecord) -> bool:
        document = {"service": job.service, "job_id": job.job_id, "owner": job.owner, "expires_at": job.expires_at}
        with self._collection("jobs") as jobs:
            # An expired record of the same id gives way; an unexpired one is kept (one owner).
            jobs.delete_one({"service": job.service, "job_id": job.job_id, "expires_at": {"$lte": utcnow()}})
            try:
                jobs.insert_one(document)
            except DuplicateKeyError:
                return False
        return True

    def fetch_jobs(self, service: str, job_ids: Sequence[str]) -> Dict[str, JobRecord]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        with self._collection("jobs") as jobs:
            documents = list(jobs.find({"service": service, "job_id": {"$in": ids}, "expires_at": {"$gt": utcnow()}}))
        return {d["job_id"]: JobRecord(service, d["job_id"], d["owner"], _aware(d["expires_at"])) for d in documents}

    def purge_expired_jobs(self) -> int:
        with self._collection("jobs") as jobs:
            return jobs.delete_many({"expires_at": {"$lte": utcnow()}}).deleted_count

    # -- housekeeping -------------------------------------------------------------------

    def ping(self) -> None:
        with self._collection("tokens") as tokens:
            tokens.database.command("ping")

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = self._db = None
            self._pid = None
            self._indexed = False


def _aware(moment: datetime) -> datetime:
    """Guard against a client built without ``tz_aware``: BSON dates are always UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _service(document: Mapping[str, Any]) -> Service:
    return service_from_record({key: document[key] for key in _SERVICE_FIELDS if key in document})
