import time

from twitcher import __version__


def test_home_names_twitcher_and_links_routes(testapp):
    body = testapp.get("/").json
    assert body["name"] == "twitcher"
    assert body["version"] == __version__
    assert body["links"]["health"] == "http://localhost/health"
    assert body["links"]["rpcinterface"] == "http://localhost/RPC2"
    assert body["links"]["ows_proxy"] == "http://localhost/ows/proxy/{service_name}"
    assert "wps" not in body["links"]


def test_home_links_come_from_twitcher_url_never_from_the_host_header(make_app):
    links = make_app(url="https://public.example/tw").get(
        "/", headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}).json["links"]
    assert links == {"health": "https://public.example/tw/health", "rpcinterface": "https://public.example/tw/RPC2",
                     "ows_proxy": "https://public.example/tw/ows/proxy/{service_name}"}


def test_home_links_follow_the_enabled_features(make_app):
    links = make_app(rpcinterface="false", ows_proxy="false", protected_path="/secure").get("/").json["links"]
    assert set(links) == {"health"}


def test_health_is_200_when_the_store_answers(testapp):
    response = testapp.get("/health", status=200)
    assert response.json == {"status": "ok", "store": "ok", "version": __version__}


def test_health_is_503_when_mongodb_does_not_answer(make_app, dead_mongodb_url):
    app = make_app(db_url=dead_mongodb_url)  # builds fine: the client connects lazily
    started = time.monotonic()
    response = app.get("/health", status=503)
    assert time.monotonic() - started < 2.0
    assert response.json == {"status": "unavailable", "store": "unavailable", "version": __version__}


def test_health_is_503_when_the_sqlite_file_cannot_be_opened(make_app, tmp_path):
    # The database path is a directory: SQLite cannot open it as a file.
    response = make_app(db_url=f"sqlite:///{tmp_path}").get("/health", status=503)
    assert response.json["store"] == "unavailable"


def test_health_recovers_when_the_store_answers_again(make_app, tmp_path, monkeypatch):
    from twitcher.store import sqlite

    monkeypatch.setattr(sqlite, "RETRY_SECONDS", 0)  # no pause before the store is tried again
    blocker = tmp_path / "data"
    blocker.write_text("a file where the store's folder should be")
    app = make_app(db_url=f"sqlite:///{blocker}/twitcher.sqlite")
    app.get("/health", status=503)
    blocker.unlink()
    assert app.get("/health", status=200).json["store"] == "ok"
