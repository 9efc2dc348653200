"""The shipped ini files start (or refuse to start) the way the docs promise."""
from __future__ import annotations

from pathlib import Path

import pytest
import webtest
from pyramid.paster import get_app

from twitcher.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def local_state(tmp_path, monkeypatch):
    """Point the store and the WPS workdir of an ini file at a temporary folder."""
    monkeypatch.setenv("TWITCHER_DB_URL", f"sqlite:///{tmp_path}/twitcher.sqlite")
    monkeypatch.setenv("TWITCHER_WPS_WORKDIR", str(tmp_path / "wps"))
    monkeypatch.delenv("TWITCHER_PASSWORD", raising=False)


def test_production_ini_refuses_to_start_without_an_admin_password(local_state):
    with pytest.raises(ConfigurationError, match="twitcher.password"):
        get_app(str(ROOT / "production.ini"))


def test_production_ini_starts_with_the_password_from_the_environment(local_state, monkeypatch):
    monkeypatch.setenv("TWITCHER_PASSWORD", "from-the-environment")
    app = webtest.TestApp(get_app(str(ROOT / "production.ini")))
    assert app.get("/health").json["store"] == "ok"
    assert app.get("/ows/wps?service=WPS&request=GetCapabilities", status=404).content_type == "text/xml"


def test_development_ini_serves_the_demo_wps(local_state):
    app = webtest.TestApp(get_app(str(ROOT / "development.ini")))
    capabilities = app.get("/ows/wps?service=WPS&request=GetCapabilities")
    assert b"hello" in capabilities.body
    refused = app.get("/ows/wps?service=WPS&version=1.0.0&request=Execute&identifier=hello&DataInputs=name=x",
                      status=401)
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_wsgi_module_builds_the_app_named_by_twitcher_ini(local_state, monkeypatch):
    import importlib

    import twitcher.wsgi

    monkeypatch.setenv("TWITCHER_INI", str(ROOT / "development.ini"))
    module = importlib.reload(twitcher.wsgi)
    assert "application" not in vars(module)  # nothing is read at import
    app = webtest.TestApp(module.application)
    assert app.get("/health").json["store"] == "ok"
    assert module.application is app.app
    importlib.reload(twitcher.wsgi)
