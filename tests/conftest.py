"""Shared fixtures. Each says when to use it."""
from __future__ import annotations

import pytest
import webtest

from twitcher import main
from twitcher.store import open_store

ADMIN_USER = "admin"
ADMIN_PASSWORD = "test-admin-password"


@pytest.fixture
def app_settings(tmp_path):
    """Ini settings for a full Twitcher on a fresh SQLite file; tests may edit before ``make_app``."""
    return {
        "twitcher.url": "http://localhost",
        "twitcher.db_url": f"sqlite:///{tmp_path}/twitcher.sqlite",
        "twitcher.username": ADMIN_USER,
        "twitcher.password": ADMIN_PASSWORD,
        "twitcher.wps": "false",
    }


@pytest.fixture
def make_app(app_settings):
    """Build a ``webtest.TestApp`` around the real ``main()``; pass overrides as keywords.

    Use it when a test needs settings other than the defaults of ``app_settings``.
    """
    def build(**overrides) -> webtest.TestApp:
        settings = dict(app_settings)
        settings.update({f"twitcher.{k}": str(v) for k, v in overrides.items()})
        return webtest.TestApp(main({}, **settings))

    return build


@pytest.fixture
def testapp(make_app) -> webtest.TestApp:
    """The whole application with default test settings, for functional tests."""
    return make_app()


@pytest.fixture
def store(app_settings):
    """The same store the app of ``testapp`` uses (one SQLite file), to arrange and inspect data."""
    backend = open_store(app_settings["twitcher.db_url"])
    yield backend
    backend.close()


@pytest.fixture
def live_twitcher(app_settings):
    """A real Twitcher (real ``main()``) served by waitress on 127.0.0.1; yields its base URL.

    Use it for tests that need real HTTP: XML-RPC clients, OWSLib, twitcherctl. Its
    ``twitcher.url`` is its own address, so rewritten links work. Edit ``app_settings`` in the
    test (or a fixture) before requesting this one.
    """
    from tests.servers import serve_twitcher

    with serve_twitcher(app_settings) as base_url:
        yield base_url


@pytest.fixture
def dead_mongodb_url() -> str:
    """A ``mongodb://`` URL on a closed 127.0.0.1 port with a 300 ms server selection timeout.

    Use it for fail-closed tests: a store built on it raises ``StoreUnavailable`` quickly.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The socket is closed (never listened on): connecting is refused at once.
    return f"mongodb://127.0.0.1:{port}/twitcher?serverSelectionTimeoutMS=300&connectTimeoutMS=300"


@pytest.fixture(scope="session")
def pygeoapi_server(tmp_path_factory):
    """A real pygeoapi on 127.0.0.1 for the whole session (pygeoapi allows one per process).

    Use it for OGC API end-to-end tests; yields the :class:`tests.pygeoapi_backend.PygeoapiBackend`
    (its ``requests`` show what reached the backend) and its base URL. Skipped, saying so, when
    pygeoapi cannot be imported.
    """
    pytest.importorskip("pygeoapi", reason="pygeoapi is not installed (pip install -e .[test])")
    from tests.pygeoapi_backend import PygeoapiBackend
    from tests.servers import serve_wsgi

    backend = PygeoapiBackend()
    with serve_wsgi(backend) as base_url:
        backend.configure(base_url, tmp_path_factory.mktemp("pygeoapi"))
        yield backend, base_url
