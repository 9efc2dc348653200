import pytest

from twitcher.exceptions import ConfigurationError
from twitcher.settings import parse_settings

BASE = {"twitcher.password": "secret"}


def test_defaults_are_typed():
    settings = parse_settings(BASE, environ={})
    assert settings.db_url == "sqlite://"
    assert settings.ows_security is True
    assert settings.wps is False
    assert settings.protected_path == "/ows"
    assert ("wps", "execute") not in settings.public_requests
    assert ("wps", "getcapabilities") in settings.public_requests
    assert settings.proxy_timeout == (5.0, 300.0)
    assert settings.token_max_hours == 720.0


def test_settings_are_frozen():
    settings = parse_settings(BASE, environ={})
    with pytest.raises(AttributeError):
        settings.url = "http://other"


def test_environment_variable_overrides_ini():
    settings = parse_settings({**BASE, "twitcher.db_url": "sqlite://"},
                              environ={"TWITCHER_DB_URL": "mongodb://db.example.org/twitcher"})
    assert settings.db_url == "mongodb://db.example.org/twitcher"


@pytest.mark.parametrize(("key", "value"), [
    ("twitcher.url", "ftp://example.org"),
    ("twitcher.db_url", "postgres://x"),
    ("twitcher.ows_security", "maybe"),
    ("twitcher.token_max_hours", "-1"),
    ("twitcher.token_max_hours", "nan"),
    ("twitcher.proxy_timeout", "1 2 3"),
    ("twitcher.proxy_timeout", "0"),
    ("twitcher.max_request_body", "0"),
    ("twitcher.rewrite_max_bytes", "ten"),
    ("twitcher.public_requests", "getcapabilities"),
    ("twitcher.protected_path", "/"),
])
def test_bad_value_fails_naming_the_key(key, value):
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
        parse_settings({**BASE, key: value}, environ={})


def test_unknown_key_is_refused():
    with pytest.raises(ConfigurationError, match="twitcher.dburl"):
        parse_settings({**BASE, "twitcher.dburl": "sqlite://"}, environ={})


def test_admin_api_without_password_refuses_to_start():
    with pytest.raises(ConfigurationError, match="twitcher.password"):
        parse_settings({}, environ={})


def test_password_may_come_from_environment():
    settings = parse_settings({}, environ={"TWITCHER_PASSWORD": "from-env"})
    assert settings.password == "from-env"


def test_no_password_needed_without_admin_api():
    settings = parse_settings({"twitcher.rpcinterface": "false"}, environ={})
    assert settings.password is None


def test_protected_path_is_normalised():
    settings = parse_settings({**BASE, "twitcher.protected_path": "secure/ows/"}, environ={})
    assert settings.protected_path == "/secure/ows"


def test_timeouts_accept_one_or_two_numbers():
    assert parse_settings({**BASE, "twitcher.proxy_timeout": "10"}, environ={}).proxy_timeout == (10.0, 10.0)
    assert parse_settings({**BASE, "twitcher.proxy_timeout": "2, 30"}, environ={}).proxy_timeout == (2.0, 30.0)
