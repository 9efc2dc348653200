"""The data plane's pieces on their own: settings, the front check, which answers are data, the
generated configuration (checked by ``nginx -t`` when nginx is installed), ``twitcherctl nginx-config``.

The whole path through a real nginx is in ``tests/test_e2e_nginx.py``.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.nginx import check_config, nginx_binary, write_config
from twitcher.admin.client import main as twitcherctl
from twitcher.dataplane.accel import _ogcapi_data, data_location, is_data_path, service_key
from twitcher.dataplane.front import from_front
from twitcher.dataplane.nginxconf import Front, nginx_config
from twitcher.exceptions import ConfigurationError
from twitcher.services import Service, service_from_registration
from twitcher.settings import parse_settings

SECRET = "a-front-secret-of-some-length"
BASE = {"twitcher.password": "x"}


def _settings(**values):
    return parse_settings({**BASE, **{f"twitcher.{k}": v for k, v in values.items()}}, environ={})


def test_python_is_the_default_plane():
    assert _settings().data_plane == "python"


def test_nginx_plane_without_a_front_refuses_to_start():
    with pytest.raises(ConfigurationError, match="front_secret or twitcher.front_addresses"):
        _settings(data_plane="nginx")
    assert _settings(data_plane="nginx", front_secret=SECRET).front_secret == SECRET
    assert _settings(data_plane="nginx", front_addresses="10.0.0.0/8").front_addresses == ("10.0.0.0/8",)


@pytest.mark.parametrize(("key", "value"), [
    ("data_plane", "apache"), ("front_secret", "short"), ("front_secret", "with a space in it, long enough"),
    ("front_addresses", "not-an-address"),
])
def test_bad_values_name_their_key(key, value):
    with pytest.raises(ConfigurationError, match=f"twitcher.{key}"):
        _settings(**{key: value})


@pytest.mark.parametrize(("settings", "environ", "expected"), [
    ({}, {"HTTP_X_TWITCHER_FRONT": SECRET, "REMOTE_ADDR": "127.0.0.1"}, False),  # nothing configured: closed
    ({"front_secret": SECRET}, {"HTTP_X_TWITCHER_FRONT": SECRET}, True),
    ({"front_secret": SECRET}, {"HTTP_X_TWITCHER_FRONT": SECRET[:-1]}, False),
    ({"front_secret": SECRET}, {}, False),
    ({"front_addresses": "10.1.0.0/16"}, {"REMOTE_ADDR": "10.1.2.3"}, True),
    ({"front_addresses": "10.1.0.0/16"}, {"REMOTE_ADDR": "10.2.0.1", "HTTP_X_FORWARDED_FOR": "10.1.2.3"}, False),
    ({"front_addresses": "10.1.0.0/16", "front_secret": SECRET}, {"REMOTE_ADDR": "10.1.2.3"}, False),
    ({"front_addresses": "10.1.0.0/16", "front_secret": SECRET},
     {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_TWITCHER_FRONT": SECRET}, True),
])
def test_from_front(settings, environ, expected):
    assert from_front(environ, _settings(**settings)) is expected


@pytest.mark.parametrize(("path", "data"), [
    ("outputs/1234/result.nc", True), ("outputs/x.tif", True), ("outputs/x.bin", True),
    ("outputs/1234.xml", False), ("outputs/x.JSON", False), ("outputs/index.html", False),
    ("outputs/noext", False), ("outputs/", False), ("outputs/.hidden", False), ("outputs/a%2Exml", False),
])
def test_which_files_are_data(path, data):
    assert is_data_path(path) is data


@pytest.mark.parametrize(("extra_path", "query", "data"), [
    ("collections/dem/coverage", "", True), ("collections/dem/coverage", "f=json", False),
    ("collections/world/map", "f=png", True), ("collections/world/map", "f=html", False),
    ("collections/x/tiles/WebMercatorQuad/3/2/1", "", True), ("collections/x/tiles/WebMercatorQuad", "", False),
    ("collections/x/items", "", False), ("collections/x/items/1", "", False), ("jobs/1/results/out.tif", "", True),
    ("processes", "", False), ("", "", False), (None, "", False),
])
def test_which_ogcapi_answers_are_data(extra_path, query, data):
    assert _ogcapi_data(extra_path, query) is data


def test_a_changed_service_gets_a_new_data_location():
    first = Service("emu", "http://h:5000/wps")
    assert data_location(first) == f"/_twitcher/data/emu/{service_key(first)}"
    assert service_key(first) != service_key(Service("emu", "http://h:5001/wps"))
    assert service_key(first) != service_key(Service("emu", "http://h:5000/wps", verify=False))
    assert service_key(first) == service_key(Service("emu", "http://h:5000/other"))  # same upstream


SERVICES = [
    service_from_registration("http://127.0.0.1:5000/wps", {"name": "emu"}),
    service_from_registration("https://maps.example.org/cgi-bin/mapserv?map=/x.map", {"name": "maps", "type": "wms"}),
    service_from_registration("https://api.example.org/ogc/", {"name": "api", "type": "ogcapi", "verify": False}),
    service_from_registration("http://[::1]:8080/wcs", {"name": "cov", "type": "wcs",
                                                        "purl": "https://data.example.org/cov"}),
]


def test_generated_configuration_holds_what_the_issue_asks():
    text = nginx_config(SERVICES, _settings(front_secret=SECRET, url="https://tw.example.org"),
                        Front("0.0.0.0:443", "127.0.0.1:8000", "/etc/tls/c.pem", "/etc/tls/k.pem", "/etc/tls/ca.pem"))
    for service in SERVICES:
        assert f"upstream twitcher_svc_{service.name} {{" in text
        assert f"location = {data_location(service)} {{" in text
    assert text.count("keepalive") == len(SERVICES) + 1
    assert "proxy_buffering off;" in text and "resolver" not in text
    assert 'proxy_set_header Authorization "";' in text and 'proxy_set_header Access-Token "";' in text
    assert "proxy_set_header X-Original-Method $request_method;" in text
    assert "proxy_set_header X-Original-URI $request_uri;" in text
    assert "proxy_method $twitcher_method;" in text
    assert "listen 0.0.0.0:443 ssl;" in text and "ssl_verify_client optional;" in text
    assert "proxy_set_header X-Ssl-Client-Verify $ssl_client_verify;" in text
    assert "server [::1]:8080;" in text
    assert 'sub_filter "https://api.example.org/ogc/" "https://tw.example.org/ows/proxy/api/";' in text
    assert 'sub_filter "http://[::1]:8080/" "https://data.example.org/cov/";' in text
    assert "proxy_ssl_verify off;" in text and 'proxy_ssl_name "maps.example.org";' in text


def test_generated_configuration_needs_the_front_secret():
    with pytest.raises(ValueError, match="front_secret"):
        nginx_config(SERVICES, _settings(front_addresses="127.0.0.1"), Front("127.0.0.1:8080", "127.0.0.1:8000"))


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)")
def test_nginx_accepts_the_generated_configuration(tmp_path):
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    _self_signed(cert, key)
    ca.write_bytes(cert.read_bytes())
    # nginx resolves the backends' host names when it loads the file: names this machine knows.
    services = [replace(s, url=s.url.replace("maps.example.org", "localhost").replace("api.example.org", "localhost"))
                for s in SERVICES]
    text = nginx_config(services, _settings(front_secret=SECRET),
                        Front("127.0.0.1:8443", "127.0.0.1:8000", str(cert), str(key), str(ca)))
    write_config(tmp_path / "nginx", text)
    checked = check_config(nginx_binary(), tmp_path / "nginx")
    assert checked.returncode == 0, checked.stderr


def _self_signed(cert, key) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS variant")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)


def test_twitcherctl_nginx_config_lists_the_registered_services(live_twitcher, store, tmp_path, capsys, monkeypatch):
    store.save_service(service_from_registration("http://127.0.0.1:5000/wps", {"name": "emu"}))
    ini = tmp_path / "twitcher.ini"
    ini.write_text(f"[app:main]\nuse = egg:twitcher\ntwitcher.url = https://tw.example.org\n"
                   f"twitcher.front_secret = {SECRET}\ntwitcher.max_request_body = 1234\n"
                   "here = %(here)s\n", encoding="utf-8")
    monkeypatch.delenv("TWITCHER_FRONT_SECRET", raising=False)
    status = twitcherctl(["-s", live_twitcher, "-p", ADMIN_PASSWORD, "nginx-config", "--listen", "127.0.0.1:8080",
                          "--app", "127.0.0.1:8000", "--ini", str(ini)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "upstream twitcher_svc_emu {" in out and "client_max_body_size 1234;" in out
    assert f'proxy_set_header X-Twitcher-Front "{SECRET}";' in out
    assert '"https://tw.example.org/ows/proxy/emu/"' in out
    # The environment overrides the ini file, as it does for Twitcher; without a secret: one error line.
    monkeypatch.setenv("TWITCHER_FRONT_SECRET", "")
    status = twitcherctl(["-s", live_twitcher, "-p", ADMIN_PASSWORD, "--json", "nginx-config", "--listen", "a:1",
                          "--app", "b:2", "--ini", str(ini)])
    _, err = capsys.readouterr()
    assert status == 1 and err.count("\n") == 1 and "front_secret" in err
