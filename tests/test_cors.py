"""CORS under the protected path (twitcher/cors.py), on the whole app and against real pygeoapi."""
from __future__ import annotations

import pytest
import requests

from tests.servers import running_twitcher
from twitcher.services import Service

PORTAL = "https://portal.example.org"
TIMEOUT = 30


def preflight(app, path, origin=PORTAL, method="POST", headers="authorization, content-type, prefer"):
    return app.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                      "Access-Control-Request-Headers": headers}, expect_errors=True)


def test_off_by_default_no_headers_and_preflight_is_an_ordinary_request(make_app):
    app = make_app()
    answer = preflight(app, "/ows/proxy/nothere")
    assert answer.status_int == 405  # judged as any OPTIONS request: not an OWS method
    assert not [k for k in answer.headers if k.lower().startswith("access-control-")]


def test_star_answers_preflight_without_token_and_allows_no_credentials(make_app):
    app = make_app(cors_allow_origins="*")
    answer = preflight(app, "/ows/proxy/nothere/processes/x/execution")
    assert answer.status_int == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers
    allowed = {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "access-token", "content-type", "prefer"} <= allowed
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]


def test_refusals_carry_the_headers_with_exposed_location_link_and_www_authenticate(make_app, store):
    store.save_service(Service(name="emu", url="http://127.0.0.1:9/wps"))
    app = make_app(cors_allow_origins="*")
    for path, status in (("/ows/proxy/emu?service=WPS&request=Execute&version=1.0.0&identifier=x", 401),
                         ("/ows/proxy/nothere?service=WPS&request=GetCapabilities", 404),
                         ("/ows/proxy/emu", 400)):
        answer = app.get(path, headers={"Origin": PORTAL}, status=status)
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        exposed = {h.strip().lower() for h in answer.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"location", "link", "www-authenticate"} <= exposed


def test_a_list_echoes_listed_origins_only_with_vary(make_app):
    app = make_app(cors_allow_origins=f"{PORTAL} http://localhost:3000")
    listed = preflight(app, "/ows/proxy/x", origin="http://localhost:3000")
    assert listed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert listed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in listed.headers["Vary"]
    stranger = preflight(app, "/ows/proxy/x", origin="https://evil.example")
    assert stranger.status_int == 204 and "Access-Control-Allow-Origin" not in stranger.headers
    assert "Access-Control-Allow-Origin" not in app.get("/ows/proxy/x?service=WPS&request=GetCapabilities",
                                                        headers={"Origin": "https://evil.example"}, status=404).headers


def test_paths_outside_the_protected_prefix_get_no_cors(make_app):
    app = make_app(cors_allow_origins="*")
    assert "Access-Control-Allow-Origin" not in app.get("/health", headers={"Origin": PORTAL}).headers


@pytest.mark.parametrize("value", ["* https://a.org", "ftp://a.org", "https://a.org/path"])
def test_bad_origin_settings_stop_start_up(value):
    from twitcher.exceptions import ConfigurationError
    from twitcher.settings import parse_settings

    with pytest.raises(ConfigurationError, match="cors_allow_origins"):
        parse_settings({"twitcher.password": "x", "twitcher.cors_allow_origins": value}, environ={})


def test_browser_like_exchange_with_pygeoapi(tmp_path, pygeoapi_server):
    """What a web page does: preflight, then the request with its token; then reads Location."""
    backend, backend_url = pygeoapi_server
    with running_twitcher(tmp_path, [(backend_url, {"name": "geo", "type": "ogcapi"})],
                          settings={"twitcher.cors_allow_origins": PORTAL}) as twitcher:
        token = twitcher.token(subject="web-user")
        api = twitcher.proxy("geo")
        before = len(backend.requests)
        answer = requests.options(f"{api}/processes/hello-world/execution", timeout=TIMEOUT, headers={
            "Origin": PORTAL, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,prefer"})
        assert answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == PORTAL
        assert [r for r in backend.requests[before:] if r[0] == "OPTIONS"] == []
        run = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "web"}},
                            headers={"Origin": PORTAL, "Authorization": f"Bearer {token}",
                                     "Prefer": "respond-async"}, timeout=TIMEOUT)
        assert run.status_code == 201
        assert run.headers["Access-Control-Allow-Origin"] == PORTAL
        assert "Location" in run.headers["Access-Control-Expose-Headers"]
        assert run.headers["Location"].startswith(api + "/jobs/")
        refused = requests.get(run.headers["Location"], headers={"Origin": PORTAL}, timeout=TIMEOUT)
        assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == PORTAL
        assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]
