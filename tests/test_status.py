from twitcher.exceptions import StoreUnavailable


def test_home_lists_routes(testapp):
    body = testapp.get("/").json
    assert body["name"] == "twitcher"
    assert body["links"]["health"].endswith("/health")
    assert body["links"]["rpcinterface"].endswith("/RPC2")


def test_health_reports_store_ok(testapp):
    assert testapp.get("/health").json == {"status": "ok", "store": "ok", "version": testapp.get("/").json["version"]}


def test_health_is_503_when_store_does_not_answer(testapp, monkeypatch):
    registry_store = testapp.app.registry.store

    def down():
        raise StoreUnavailable("down")

    monkeypatch.setattr(registry_store, "ping", down)
    response = testapp.get("/health", status=503)
    assert response.json["store"] == "unavailable"
