"""The store contract: every backend (SQLite file and memory, MongoDB via mongomock or a real
server) behaves the same. Backend-specific tests (fail-closed, indexes, client lifecycle) follow."""
from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import mongomock
import pytest
from mongomock.store import ServerStore

from twitcher.exceptions import AccessDenied, InvalidArgument, ServiceExists, StoreUnavailable
from twitcher.jobs import JobRecord
from twitcher.services import Service
from twitcher.store import Store, open_store
from twitcher.store.base import EXPIRED_GRACE_SECONDS
from twitcher.store.mongodb import DEFAULT_TIMEOUTS_MS, MongoStore, client_options
from twitcher.store.sqlite import SQLiteStore
from twitcher.tokens import AccessToken, check_token, new_token, utcnow

MONGODB_URL = os.environ.get("TWITCHER_TEST_MONGODB_URL")
#: Seconds a forked child may take before the test kills it and fails.
CHILD_TIMEOUT = 20.0


@dataclass
class Backend:
    """How to open (another) store object on one test database, and what it shares."""

    name: str
    open: Callable[[], Store]
    #: Two store objects in one process see one database.
    shared: bool = True
    #: A forked child writes to the parent's database (not a copy of it).
    shared_across_processes: bool = True


def mongomock_factory(server: ServerStore) -> Callable[..., mongomock.MongoClient]:
    """A client factory for MongoStore whose clients all see one in-memory server."""

    def factory(uri: str, **options) -> mongomock.MongoClient:
        return mongomock.MongoClient(uri, _store=server, **options)

    return factory


def database_url(url: str, database: str) -> str:
    """``url`` with its database part replaced, options kept (``mongodb://h1,h2/db?opts``)."""
    scheme, rest = url.split("://", 1)
    rest, _, options = rest.partition("?")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}" + (f"?{options}" if options else "")


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "mongomock", "mongodb"])
def backend(request, tmp_path) -> Iterator[Backend]:
    """One empty database per test, for every backend available here."""
    opened = []

    def track(make: Callable[[], Store]) -> Callable[[], Store]:
        def open_one() -> Store:
            opened.append(make())
            return opened[-1]
        return open_one

    if request.param == "sqlite-file":
        yield Backend("sqlite-file", track(lambda: open_store(f"sqlite:///{tmp_path}/store.sqlite")))
    elif request.param == "sqlite-memory":
        yield Backend("sqlite-memory", track(lambda: open_store("sqlite://")),
                      shared=False, shared_across_processes=False)
    elif request.param == "mongomock":
        factory = mongomock_factory(ServerStore())
        yield Backend("mongomock", track(lambda: MongoStore("mongodb://localhost/twitcher_test", factory)),
                      shared_across_processes=False)
    else:
        if not MONGODB_URL:
            pytest.skip("real MongoDB not tested: set TWITCHER_TEST_MONGODB_URL (e.g. mongodb://localhost:27017)")
        url = database_url(MONGODB_URL, f"twitcher_test_{uuid.uuid4().hex[:12]}")
        yield Backend("mongodb", track(lambda: open_store(url)))
        import pymongo

        with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(client.get_default_database())
    for store in opened:
        store.close()


@pytest.fixture
def any_store(backend) -> Store:
    """A store on the test database of ``backend``."""
    return backend.open()


def saved_token(store: Store, hours: float = 1.0, environ=None, now=None) -> AccessToken:
    _, record = new_token(hours, environ, now=now)
    store.save_token(record)
    return record


# -- tokens -----------------------------------------------------------------------------


def test_saved_token_is_fetched_with_all_its_fields(any_store):
    record = saved_token(any_store, hours=2, environ={"USER": "alice"})
    fetched = any_store.fetch_token(record.digest)
    assert fetched == record
    assert fetched.expires_at.tzinfo is not None
    assert check_token(fetched) == record


def test_unknown_digest_is_none_and_check_says_unknown(any_store):
    saved_token(any_store)
    fetched = any_store.fetch_token("0" * 64)
    assert fetched is None
    with pytest.raises(AccessDenied, match="unknown"):
        check_token(fetched)


def test_environ_round_trips_unicode(any_store):
    environ = {"USER": "Zoë Ångström", "GREETING": "こんにちは ✓", "EMPTY": ""}
    record = saved_token(any_store, environ=environ)
    assert dict(any_store.fetch_token(record.digest).environ) == environ


def test_subject_round_trips_and_defaults_to_none(any_store):
    _, with_subject = new_token(1, subject="alice@example.org")
    any_store.save_token(with_subject)
    assert any_store.fetch_token(with_subject.digest).subject == "alice@example.org"
    assert any_store.fetch_token(saved_token(any_store).digest).subject is None


# -- job owners ---------------------------------------------------------------------------


def job(job_id: str = "j-1", owner: str = "subject:alice", service: str = "geo", hours: float = 1.0,
        now=None) -> JobRecord:
    return JobRecord(service, job_id, owner, (now or utcnow()).replace(microsecond=0) + timedelta(hours=hours))


def test_saved_job_is_fetched_by_service_and_id(any_store):
    record = job()
    assert any_store.save_job(record) is True
    assert any_store.fetch_jobs("geo", ["j-1", "j-2"]) == {"j-1": record}
    assert any_store.fetch_jobs("other", ["j-1"]) == {}
    assert any_store.fetch_jobs("geo", []) == {}


def test_a_job_never_changes_owner(any_store):
    assert any_store.save_job(job(owner="subject:alice"))
    assert any_store.save_job(job(owner="subject:bob")) is False
    assert any_store.fetch_jobs("geo", ["j-1"])["j-1"].owner == "subject:alice"


def test_the_same_job_id_on_two_services_are_two_jobs(any_store):
    assert any_store.save_job(job(service="a", owner="subject:alice"))
    assert any_store.save_job(job(service="b", owner="subject:bob"))
    assert any_store.fetch_jobs("b", ["j-1"])["j-1"].owner == "subject:bob"


def test_expired_job_records_are_not_fetched_and_give_way(any_store):
    old = job(now=utcnow() - timedelta(hours=3))
    assert any_store.save_job(old)
    assert any_store.fetch_jobs("geo", ["j-1"]) == {}
    assert any_store.save_job(job(owner="subject:bob"))
    assert any_store.fetch_jobs("geo", ["j-1"])["j-1"].owner == "subject:bob"


def test_purge_deletes_only_expired_job_records(any_store):
    any_store.save_job(job("old", now=utcnow() - timedelta(hours=3)))
    any_store.save_job(job("new"))
    # MongoDB's TTL index may have removed the old record already (mongomock does so at once).
    assert any_store.purge_expired_jobs() <= 1
    assert any_store.purge_expired_jobs() == 0
    assert list(any_store.fetch_jobs("geo", ["old", "new"])) == ["new"]


def test_many_job_ids_are_looked_up_at_once(any_store):
    for n in range(30):
        any_store.save_job(job(f"j-{n}", owner=f"subject:u{n % 3}"))
    found = any_store.fetch_jobs("geo", [f"j-{n}" for n in range(40)])
    assert sorted(found) == sorted(f"j-{n}" for n in range(30))
    assert found["j-4"].owner == "subject:u1"


def test_saving_a_digest_twice_is_refused_and_keeps_the_first(any_store):
    record = saved_token(any_store, environ={"USER": "first"})
    with pytest.raises(InvalidArgument):
        any_store.save_token(AccessToken(record.digest, record.expires_at, {"USER": "second"}))
    assert any_store.fetch_token(record.digest).environ == {"USER": "first"}


def test_revoked_token_is_kept_and_reported_revoked(any_store):
    record = saved_token(any_store)
    other = saved_token(any_store)
    assert any_store.revoke_token(record.digest) is True
    assert any_store.revoke_token(record.digest) is False
    with pytest.raises(AccessDenied, match="revoked"):
        check_token(any_store.fetch_token(record.digest))
    assert check_token(any_store.fetch_token(other.digest)) == other


def test_revoking_an_unknown_or_expired_token_revokes_nothing(any_store):
    expired = saved_token(any_store, hours=1, now=utcnow() - timedelta(hours=2))
    assert any_store.revoke_token("f" * 64) is False
    assert any_store.revoke_token(expired.digest) is False


def test_revoke_all_counts_usable_tokens_and_rejects_them_all(any_store):
    usable = [saved_token(any_store) for _ in range(3)]
    saved_token(any_store, hours=1, now=utcnow() - timedelta(hours=2))
    any_store.revoke_token(usable[0].digest)
    assert any_store.revoke_all_tokens() == 2
    for record in usable:
        with pytest.raises(AccessDenied, match="revoked"):
            check_token(any_store.fetch_token(record.digest))
    assert any_store.revoke_all_tokens() == 0


def test_expired_token_is_fetched_and_reported_expired(any_store):
    record = saved_token(any_store, hours=1, now=utcnow() - timedelta(hours=1, seconds=5))
    fetched = any_store.fetch_token(record.digest)
    assert fetched is not None
    with pytest.raises(AccessDenied, match="expired"):
        check_token(fetched)


def test_expiry_is_judged_when_the_token_is_read(any_store):
    record = saved_token(any_store, hours=1)
    fetched = any_store.fetch_token(record.digest)
    assert check_token(fetched, now=record.expires_at - timedelta(seconds=1)) == record
    with pytest.raises(AccessDenied, match="expired"):
        check_token(fetched, now=record.expires_at)


def test_purge_deletes_only_expired_tokens(any_store):
    expired = saved_token(any_store, hours=1, now=utcnow() - timedelta(hours=3))
    live = saved_token(any_store, hours=1)
    assert any_store.purge_expired_tokens() == 1
    assert any_store.fetch_token(expired.digest) is None
    assert any_store.fetch_token(live.digest) == live
    assert any_store.purge_expired_tokens() == 0


# -- revocation ids of signed tokens ----------------------------------------------------


def rid(n: int) -> str:
    return f"{n:0128x}"


def test_recorded_signed_token_is_not_revoked_until_revoked(any_store):
    later = utcnow() + timedelta(hours=1)
    any_store.record_signed_token(rid(1), later)
    any_store.record_signed_token(rid(1), later)  # twice: no error, no change
    assert any_store.revoked_ids() == []
    assert any_store.revoke_ids([rid(1)], later) == 1
    assert any_store.revoked_ids() == [rid(1)]


def test_revoking_ids_counts_only_new_revocations_and_lists_them_sorted(any_store):
    later = utcnow() + timedelta(hours=1)
    assert any_store.revoke_ids([rid(3), rid(2)], later) == 2
    assert any_store.revoke_ids([rid(2), rid(4)], later) == 1
    assert any_store.revoked_ids() == [rid(2), rid(3), rid(4)]


def test_revoked_ids_of_expired_tokens_are_not_listed(any_store):
    any_store.revoke_ids([rid(5)], utcnow() - timedelta(seconds=1))
    any_store.revoke_ids([rid(6)], utcnow() + timedelta(hours=1))
    assert any_store.revoked_ids() == [rid(6)]


def test_revoking_a_recorded_id_keeps_the_longer_lifetime(any_store):
    any_store.record_signed_token(rid(7), utcnow() + timedelta(hours=2))
    assert any_store.revoke_ids([rid(7)], utcnow() - timedelta(hours=1)) == 1
    assert any_store.revoked_ids() == [rid(7)]


def test_revoke_all_signed_tokens_revokes_recorded_live_ones(any_store):
    any_store.record_signed_token(rid(8), utcnow() + timedelta(hours=1))
    any_store.record_signed_token(rid(9), utcnow() + timedelta(hours=1))
    any_store.record_signed_token(rid(10), utcnow() - timedelta(seconds=1))
    any_store.revoke_ids([rid(9)], utcnow() + timedelta(hours=1))
    assert any_store.revoke_all_signed_tokens() == 1
    assert any_store.revoked_ids() == [rid(8), rid(9)]


def test_revocation_ids_are_shared_by_two_store_objects(backend):
    if not backend.shared:
        pytest.skip(f"{backend.name}: every store object has its own database by design")
    first, second = backend.open(), backend.open()
    first.revoke_ids([rid(11)], utcnow() + timedelta(hours=1))
    assert second.revoked_ids() == [rid(11)]


# -- services ---------------------------------------------------------------------------


def service(name: str, url: str = "https://wps.example.org/wps", **fields) -> Service:
    return Service(name=name, url=url, **fields)


def test_saved_service_is_fetched_by_name_with_all_its_fields(any_store):
    emu = service("emu", "https://emu.example.org/wps?map=emu.map", type="wms", public=True, auth="cert",
                  purl="https://proxy.example.org/emu", verify=False)
    assert any_store.save_service(emu) == emu
    assert any_store.fetch_by_name("emu") == emu
    assert any_store.fetch_by_name("nobody") is None


@pytest.mark.parametrize("verify", [True, False, "/etc/ssl/certs/ca-bundle.pem"])
def test_verify_round_trips_as_bool_or_ca_path(any_store, verify):
    any_store.save_service(service("emu", verify=verify))
    fetched = any_store.fetch_by_name("emu").verify
    assert fetched == verify
    assert type(fetched) is type(verify)


def test_fetch_by_url_finds_the_first_service_by_name(any_store):
    any_store.save_service(service("zeta", "https://a.example.org/wps"))
    any_store.save_service(service("alpha", "https://a.example.org/wps"))
    any_store.save_service(service("beta", "https://b.example.org/wps"))
    assert any_store.fetch_by_url("https://a.example.org/wps").name == "alpha"
    assert any_store.fetch_by_url("https://b.example.org/wps").name == "beta"
    assert any_store.fetch_by_url("https://a.example.org/wps/") is None


def test_services_are_listed_sorted_by_name(any_store):
    for name in ("hummingbird", "emu", "zebra", "albatross"):
        any_store.save_service(service(name))
    assert [s.name for s in any_store.list_services()] == ["albatross", "emu", "hummingbird", "zebra"]


def test_empty_store_lists_no_services(any_store):
    assert any_store.list_services() == []


def test_taken_name_without_overwrite_raises_service_exists(any_store):
    first = service("emu", "https://first.example.org/wps")
    any_store.save_service(first, overwrite=False)
    with pytest.raises(ServiceExists, match="emu"):
        any_store.save_service(service("emu", "https://second.example.org/wps"), overwrite=False)
    assert any_store.fetch_by_name("emu") == first


def test_overwrite_replaces_the_whole_record(any_store):
    any_store.save_service(service("emu", "https://first.example.org/wps", public=True, verify="/ca.pem"))
    second = service("emu", "https://second.example.org/wps")
    any_store.save_service(second, overwrite=True)
    assert any_store.fetch_by_name("emu") == second
    assert any_store.fetch_by_url("https://first.example.org/wps") is None
    assert len(any_store.list_services()) == 1


def test_delete_service_says_whether_it_existed(any_store):
    any_store.save_service(service("emu"))
    any_store.save_service(service("owl"))
    assert any_store.delete_service("emu") is True
    assert any_store.delete_service("emu") is False
    assert [s.name for s in any_store.list_services()] == ["owl"]


def test_clear_services_removes_all_and_counts_them(any_store):
    for name in ("a", "b", "c"):
        any_store.save_service(service(name))
    assert any_store.clear_services() == 3
    assert any_store.list_services() == []
    assert any_store.clear_services() == 0


def test_tokens_survive_clearing_services(any_store):
    record = saved_token(any_store)
    any_store.save_service(service("emu"))
    any_store.clear_services()
    assert any_store.fetch_token(record.digest) == record


# -- concurrency, several store objects, processes ----------------------------------------


def test_concurrent_writers_lose_no_token(any_store):
    def write_batch(_: int) -> list:
        return [saved_token(any_store).digest for _ in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = [d for batch in pool.map(write_batch, range(8)) for d in batch]
    assert len(set(digests)) == 400
    assert all(any_store.fetch_token(d) is not None for d in digests)


def test_concurrent_overwrites_of_one_service_all_succeed(any_store):
    def register(i: int) -> None:
        any_store.save_service(service("emu", f"https://wps{i}.example.org/wps"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(register, range(32)))
    [only] = any_store.list_services()
    assert only.name == "emu"


def test_two_store_objects_see_each_others_writes(backend):
    if not backend.shared:
        pytest.skip(f"{backend.name}: every store object has its own database by design")
    one, two = backend.open(), backend.open()
    record = saved_token(one)
    two.save_service(service("emu"))
    assert two.fetch_token(record.digest) == record
    assert one.fetch_by_name("emu") == service("emu")
    assert two.revoke_token(record.digest) is True
    assert one.fetch_token(record.digest).revoked is True


def run_in_child(work: Callable[[], bool]) -> int:
    """Fork; run ``work`` in the child; return the child's exit status (0: work returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            status = 0 if work() else 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child did not finish within {CHILD_TIMEOUT} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_store_used_before_a_fork_works_in_the_child(backend):
    store = backend.open()
    before = saved_token(store)  # the parent's connection exists now, as under gunicorn --preload
    _, made_in_child = new_token(1)

    def child_work() -> bool:
        store.save_token(made_in_child)
        return store.fetch_token(made_in_child.digest) == made_in_child

    assert run_in_child(child_work) == 0
    assert store.fetch_token(before.digest) == before  # the parent's store still works
    if backend.shared_across_processes:
        assert store.fetch_token(made_in_child.digest) == made_in_child


# -- SQLite specifics ---------------------------------------------------------------------


def test_sqlite_store_on_a_directory_raises_store_unavailable(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}")
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.fetch_token("0" * 64)


def test_sqlite_store_below_a_file_raises_store_unavailable(tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    store = SQLiteStore(f"sqlite:///{tmp_path}/not-a-folder/twitcher.sqlite")
    with pytest.raises(StoreUnavailable):
        store.list_services()


def test_sqlite_store_creates_its_folder(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/new/folder/twitcher.sqlite")
    store.ping()
    assert (tmp_path / "new" / "folder" / "twitcher.sqlite").is_file()
    store.close()


def test_sqlite_save_purges_tokens_past_the_grace_period_only(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/store.sqlite")
    long_gone = saved_token(store, hours=1, now=utcnow() - timedelta(hours=1, seconds=EXPIRED_GRACE_SECONDS + 60))
    recently_expired = saved_token(store, hours=1, now=utcnow() - timedelta(hours=2))
    saved_token(store)
    assert store.fetch_token(long_gone.digest) is None
    assert store.fetch_token(recently_expired.digest) == recently_expired
    store.close()


# -- MongoDB specifics --------------------------------------------------------------------


def test_dead_mongodb_raises_store_unavailable_quickly(dead_mongodb_url):
    store = MongoStore(dead_mongodb_url)
    for call in (store.ping, lambda: store.fetch_token("0" * 64), store.list_services,
                 lambda: store.save_service(service("emu"))):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        # 300 ms from the URL, not the 3 s default: URI options win over ours.
        assert time.monotonic() - started < 2.0
    store.close()


def test_threads_waiting_for_a_dead_mongodb_time_out_side_by_side(dead_mongodb_url):
    store = MongoStore(dead_mongodb_url.replace("serverSelectionTimeoutMS=300", "serverSelectionTimeoutMS=600"))
    failures = []

    def use() -> None:
        try:
            store.fetch_token("0" * 64)
        except StoreUnavailable:
            failures.append(True)

    threads = [threading.Thread(target=use) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # One after another would take 8 x 0.6 s; side by side about 0.6 s.
    assert time.monotonic() - started < 3.0
    assert len(failures) == 8
    store.close()


def test_dead_mongodb_error_is_logged_without_credentials(dead_mongodb_url, caplog):
    url = dead_mongodb_url.replace("mongodb://", "mongodb://admin:s3cr3t-pw@")
    store = MongoStore(url)
    with pytest.raises(StoreUnavailable):
        store.ping()
    assert "s3cr3t-pw" not in caplog.text
    assert "127.0.0.1" in caplog.text
    store.close()


def test_open_store_picks_mongodb_for_mongodb_urls_without_connecting():
    # Nothing listens on port 9: building the store must not touch the network.
    assert isinstance(open_store("mongodb://127.0.0.1:9/twitcher"), MongoStore)


def test_client_options_default_to_short_timeouts_and_aware_dates():
    options = client_options("mongodb://db1,db2/twitcher?replicaSet=rs0")
    assert options["tz_aware"] is True
    for name, value in DEFAULT_TIMEOUTS_MS.items():
        assert options[name] == value
        assert value <= 10000


def test_timeouts_in_the_uri_win_over_defaults_in_any_case():
    options = client_options("mongodb://db/twitcher?SERVERSELECTIONTIMEOUTMS=100&connectTimeoutMS=200")
    assert "serverSelectionTimeoutMS" not in options
    assert "connectTimeoutMS" not in options
    assert options["socketTimeoutMS"] == DEFAULT_TIMEOUTS_MS["socketTimeoutMS"]


class CountingFactory:
    """A mongomock client factory that records in which processes it made clients."""

    def __init__(self):
        self.server = ServerStore()
        self.calls = []

    def __call__(self, uri: str, **options) -> mongomock.MongoClient:
        self.calls.append((uri, options))
        return mongomock.MongoClient(uri, _store=self.server, **options)

    def raw(self, database: str = "twitcher"):
        """A client on the same in-memory server, to look at what the store wrote."""
        return mongomock.MongoClient(_store=self.server, tz_aware=True)[database]


def test_mongo_client_is_created_lazily_once_per_process():
    factory = CountingFactory()
    store = MongoStore("mongodb://db.example.org/twitcher", factory)
    assert factory.calls == []
    store.ping()
    threads = [threading.Thread(target=store.list_services) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(factory.calls) == 1
    assert factory.calls[0][1]["tz_aware"] is True


def test_database_defaults_to_twitcher_or_comes_from_the_url():
    factory = CountingFactory()
    MongoStore("mongodb://db.example.org", factory).save_service(service("emu"))
    MongoStore("mongodb://db.example.org/birds?replicaSet=rs0", factory).save_service(service("owl"))
    assert [d["name"] for d in factory.raw("twitcher")["services"].find()] == ["emu"]
    assert [d["name"] for d in factory.raw("birds")["services"].find()] == ["owl"]


def test_mongodb_indexes_unique_digest_ttl_expiry_unique_name_and_url():
    factory = CountingFactory()
    MongoStore("mongodb://db.example.org/twitcher", factory).ping()
    db = factory.raw()
    tokens = {tuple(i["key"]): i for i in db["tokens"].index_information().values()}
    services = {tuple(i["key"]): i for i in db["services"].index_information().values()}
    assert tokens[(("digest", 1),)].get("unique") is True
    assert tokens[(("expires_at", 1),)]["expireAfterSeconds"] == EXPIRED_GRACE_SECONDS
    assert services[(("name", 1),)].get("unique") is True
    assert not services[(("url", 1),)].get("unique")
    revocations = {tuple(i["key"]): i for i in db["revocation_ids"].index_information().values()}
    assert revocations[(("id", 1),)].get("unique") is True
    assert revocations[(("expires_at", 1),)]["expireAfterSeconds"] == EXPIRED_GRACE_SECONDS


def test_mongodb_indexes_are_created_once_per_process():
    factory = CountingFactory()
    store = MongoStore("mongodb://db.example.org/twitcher", factory)
    store.ping()
    factory.raw()["services"].drop_indexes()
    store.save_service(service("emu"))
    store.save_service(service("emu"), overwrite=True)
    assert list(factory.raw()["services"].index_information()) == ["_id_"]


def test_mongodb_keeps_expiry_as_a_bson_date():
    factory = CountingFactory()
    record = saved_token(MongoStore("mongodb://db.example.org/twitcher", factory))
    document = factory.raw()["tokens"].find_one({"digest": record.digest})
    assert isinstance(document["expires_at"], datetime)
    assert document["expires_at"] == record.expires_at.astimezone(timezone.utc)
    assert "token" not in document and set(document) == {"_id", "digest", "expires_at", "environ", "revoked", "subject"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_makes_its_own_mongo_client():
    factory = CountingFactory()
    store = MongoStore("mongodb://db.example.org/twitcher", factory)
    store.ping()
    parent = os.getpid()

    def child_work() -> bool:
        store.ping()
        # The child's factory call is recorded in the child's copy of the list.
        return len(factory.calls) == 2 and os.getpid() != parent

    assert run_in_child(child_work) == 0
    assert len(factory.calls) == 1
