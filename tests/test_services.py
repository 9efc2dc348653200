"""Unit tests of twitcher.services: what a service registration may contain."""
from __future__ import annotations

import pytest

from twitcher.exceptions import InvalidArgument
from twitcher.services import Service, check_url, name_from_url, service_from_record, service_from_registration


def test_defaults_of_a_bare_registration():
    assert service_from_registration("http://example.org/emu/wps") == Service(
        name="emu", url="http://example.org/emu/wps", type="wps", public=False, auth="token", purl="", verify=True)


def test_every_data_key_is_taken():
    service = service_from_registration("https://example.org/geo", {
        "name": "geo-1_a", "type": "WMS", "public": True, "auth": "cert",
        "purl": "https://public.example.org/geo", "verify": "/etc/ssl/ca.pem"})
    assert service.as_struct() == {"name": "geo-1_a", "url": "https://example.org/geo", "type": "wms",
                                   "public": True, "auth": "cert", "purl": "https://public.example.org/geo",
                                   "verify": "/etc/ssl/ca.pem"}


def test_url_query_string_is_kept_as_is():
    url = "http://example.org/cgi-bin/mapserv?map=/data/a.map&SERVICE=WMS"
    assert service_from_registration(url, {"name": "maps"}).url == url


@pytest.mark.parametrize(("url", "name"), [
    ("http://example.org/emu/wps", "emu"),
    ("http://example.org/wps", "example_org"),
    ("http://localhost:5000/wps", "localhost_5000"),
    ("http://localhost:8093/wps", "localhost_8093"),
    ("http://example.org/My.Service/ows", "my_service"),
    ("http://example.org/", "example_org"),
])
def test_name_derived_from_url(url, name):
    assert name_from_url(url) == name


def test_two_services_on_one_host_get_different_derived_names():
    first = service_from_registration("http://localhost:5000/wps")
    second = service_from_registration("http://localhost:5001/wps")
    assert first.name != second.name


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://example.org/wps", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("example.org/wps", "http or https"),
    ("http:///wps", "must name a host"),
    ("http://user:pw@example.org/wps", "credentials"),
    ("http://example.org/wps#frag", "fragment"),
    ("http://example.org/w ps", "spaces"),
    ("http://example.org/wps\r\nX-Injected: 1", "control characters"),
    ("http://[::1/wps", "not a valid URL"),
    ("http://example.org:99999/wps", "not a valid URL"),
    ("http://example.org/" + "a" * 2100, "longer than"),
    ("", "non-empty string"),
    (None, "non-empty string"),
    (42, "non-empty string"),
])
def test_bad_urls_are_refused(url, words):
    with pytest.raises(InvalidArgument, match=words):
        service_from_registration(url)


def test_purl_follows_the_url_rules():
    with pytest.raises(InvalidArgument, match="purl must use http"):
        service_from_registration("http://example.org/wps", {"purl": "javascript:alert(1)"})


@pytest.mark.parametrize("name", ["Emu", "e mu", "emu/x", "../emu", "é", "a" * 65, 7])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidArgument, match="not allowed"):
        service_from_registration("http://example.org/wps", {"name": name})


@pytest.mark.parametrize(("data", "words"), [
    ({"type": "sos"}, "type must be one of"),
    ({"auth": "basic"}, "auth must be one of"),
    ({"public": "maybe"}, "public must be true or false"),
    ({"public": 2}, "public must be true or false"),
    ({"verify": "ca.pem"}, "verify must be"),
    ({"verify": 3}, "verify must be"),
    ({"owner": "me"}, "unknown key 'owner'"),
    ("emu", "data must be a struct"),
    ([("name", "emu")], "data must be a struct"),
])
def test_bad_data_is_refused(data, words):
    with pytest.raises(InvalidArgument, match=words):
        service_from_registration("http://example.org/wps", data)


@pytest.mark.parametrize(("given", "expected"), [
    (True, True), (False, False), ("true", True), ("False", False), ("yes", True), ("0", False), (1, True), (0, False),
])
def test_booleans_as_old_portals_send_them(given, expected):
    service = service_from_registration("http://example.org/wps", {"public": given, "verify": given})
    assert service.public is expected and service.verify is expected


def test_nil_values_and_legacy_keys_mean_default():
    service = service_from_registration("http://example.org/emu/wps", {
        "name": None, "type": None, "public": None, "auth": None, "purl": None, "verify": None, "c4i": True})
    assert service == service_from_registration("http://example.org/emu/wps")


def test_record_round_trip():
    service = service_from_registration("http://example.org/wps", {"name": "emu", "verify": False})
    assert service_from_record(service.as_struct()) == service


def test_check_url_names_the_argument():
    with pytest.raises(InvalidArgument, match="purl must"):
        check_url("ftp://x", "purl")
