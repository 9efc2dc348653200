"""The SQLite store reads a service once per generation, and sees every change at once."""
from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from twitcher.services import Service
from twitcher.store.generation import SUFFIX
from twitcher.store.sqlite import SQLiteStore
from twitcher.tokens import new_token

EMU = Service(name="emu", url="http://localhost:5000/wps")
MOVED = Service(name="emu", url="http://elsewhere.example.org/wps", public=True)


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'twitcher.sqlite'}"


class CountingStore(SQLiteStore):
    """A store that counts its SQLite calls, and fails them on demand."""

    calls = 0
    broken = False

    @contextlib.contextmanager
    def _db(self):
        self.calls += 1
        if self.broken:
            raise AssertionError("the store was asked")
        with super()._db() as db:
            yield db


def test_a_service_is_read_once_until_something_changes(db_url):
    reader, writer = CountingStore(db_url), SQLiteStore(db_url)
    writer.save_service(EMU)
    assert reader.fetch_by_name("emu") == EMU
    reader.broken = True
    assert reader.fetch_by_name("emu") == EMU  # from the cache: no SQLite call
    writer.save_service(MOVED)
    with pytest.raises(AssertionError):
        reader.fetch_by_name("emu")  # the generation changed: asked again
    reader.broken = False
    assert reader.fetch_by_name("emu") == MOVED


def test_every_change_through_another_store_is_seen_on_the_next_lookup(db_url):
    reader, writer = SQLiteStore(db_url), SQLiteStore(db_url)
    writer.save_service(EMU)
    assert reader.fetch_by_name("emu") == EMU
    writer.save_service(MOVED)
    assert reader.fetch_by_name("emu") == MOVED
    assert writer.delete_service("emu")
    assert reader.fetch_by_name("emu") is None
    writer.save_service(EMU)
    assert reader.fetch_by_name("emu") == EMU
    assert writer.clear_services() == 1
    assert reader.fetch_by_name("emu") is None


def test_a_change_made_by_another_process_is_seen(db_url):
    reader = SQLiteStore(db_url)
    reader.save_service(EMU)
    assert reader.fetch_by_name("emu") == EMU
    code = ("import sys; from twitcher.store.sqlite import SQLiteStore; from twitcher.services import Service; "
            "SQLiteStore(sys.argv[1]).save_service(Service(name='emu', url='http://elsewhere.example.org/wps', "
            "public=True))")
    subprocess.run([sys.executable, "-c", code, db_url], check=True, timeout=60)
    assert reader.fetch_by_name("emu") == MOVED


def test_tokens_are_read_on_every_lookup(db_url):
    store = CountingStore(db_url)
    _, record = new_token(1)
    store.save_token(record)
    store.fetch_token(record.digest)
    store.broken = True
    with pytest.raises(AssertionError):
        store.fetch_token(record.digest)


def test_without_its_generation_file_nothing_is_cached(tmp_path, caplog):
    (tmp_path / ("twitcher.sqlite" + SUFFIX)).mkdir()  # in the way of the file
    store = CountingStore(f"sqlite:///{tmp_path / 'twitcher.sqlite'}")
    assert "services are not cached" in caplog.text
    store.save_service(EMU)
    before = store.calls
    assert store.fetch_by_name("emu") == EMU and store.fetch_by_name("emu") == EMU
    assert store.calls == before + 2


def test_a_memory_store_caches_within_itself():
    store = CountingStore("sqlite://")
    store.save_service(EMU)
    store.fetch_by_name("emu")
    store.broken = True
    assert store.fetch_by_name("emu") == EMU
    store.broken = False
    store.delete_service("emu")
    assert store.fetch_by_name("emu") is None
