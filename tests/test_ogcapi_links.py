"""Links in JSON answers (twitcher/ogcapi/links.py): URLs under the service become proxy URLs."""
from __future__ import annotations

import json

import pytest

from twitcher.ogcapi.links import api_root, is_json_media_type, map_json_url, rewrite_json

ROOT = api_root("http://h:5000/api")
PROXY = "https://tw.example/ows/proxy/geo"


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", True), ("application/json; charset=utf-8", True), ("application/geo+json", True),
    ("application/problem+json", True), ("Application/JSON", True), ("text/json", False),
    ("application/jsonx", False), ("text/html", False), (None, False), ("application/xml", False),
])
def test_json_media_types(content_type, expected):
    assert is_json_media_type(content_type) is expected


@pytest.mark.parametrize(("service_url", "expected"), [
    ("http://h:5000", "http://h:5000/"), ("http://h/api", "http://h/api/"), ("http://h/api/", "http://h/api/"),
    ("http://h/api?x=1", "http://h/api/"),
])
def test_api_root_is_a_directory(service_url, expected):
    assert api_root(service_url) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("http://h:5000/api/processes?f=json", PROXY + "/processes?f=json"),
    ("http://h:5000/api?f=html", PROXY + "?f=html"),
    ("http://h:5000/api", PROXY),
    ("http://h:5000/api/", PROXY),
    ("http://H:5000/api/jobs/1#x", PROXY + "/jobs/1#x"),
    ("http://h:5000/apix", None),          # not below the landing page
    ("http://h:5000/other", None),
    ("http://h:5001/api/jobs", None),      # another origin
    ("https://h:5000/api/jobs", None),
])
def test_urls_under_the_api_map_to_the_proxy(value, expected):
    assert map_json_url(value, ROOT, PROXY) == expected


def test_every_string_that_is_a_url_under_the_api_is_rewritten_and_nothing_else():
    document = {
        "links": [{"href": "http://h:5000/api/processes", "rel": "self"},
                  {"href": "http://elsewhere.org/x", "rel": "about"}],
        "processDescriptionURL": "http://h:5000/api/processes/p",
        "outputs": {"file": {"href": "http://h:5000/api/jobs/1/results/file"}},
        "text": "see http://h:5000/api/processes",  # not exactly a URL: left alone
        "nested": [["http://h:5000/api/collections"]],
    }
    rewritten = json.loads(rewrite_json(json.dumps(document).encode(), ROOT, PROXY))
    assert rewritten["links"][0]["href"] == PROXY + "/processes"
    assert rewritten["links"][1]["href"] == "http://elsewhere.org/x"
    assert rewritten["processDescriptionURL"] == PROXY + "/processes/p"
    assert rewritten["outputs"]["file"]["href"] == PROXY + "/jobs/1/results/file"
    assert rewritten["text"] == document["text"]
    assert rewritten["nested"] == [[PROXY + "/collections"]]


def test_bytes_outside_rewritten_strings_are_kept():
    body = b'{ "n": 1e400, "m": 0.10,\n  "u": "http:\\/\\/h:5000\\/api\\/jobs", "t": "caf\xc3\xa9" }'
    assert rewrite_json(body, ROOT, PROXY) == (
        b'{ "n": 1e400, "m": 0.10,\n  "u": "https://tw.example/ows/proxy/geo/jobs", "t": "caf\xc3\xa9" }')


def test_a_document_without_the_backend_host_is_returned_as_it_is():
    body = b'{"links": [{"href": "http://other/api"}]}'
    assert rewrite_json(body, api_root("http://backend.test:5000/api"), PROXY) is body


def test_broken_json_and_other_encodings_pass_unchanged():
    assert rewrite_json(b'{"a": "http://h:5000/api/x\\q"', ROOT, PROXY) == b'{"a": "http://h:5000/api/x\\q"'
    utf16 = '{"a": "http://h:5000/api/x"}'.encode("utf-16")
    assert rewrite_json(utf16, ROOT, PROXY) == utf16


def test_a_url_quoted_inside_a_text_is_not_a_url_value():
    body = b'{"t": "see \\"http://h:5000/api/x\\" here", "u": ["http://h:5000/api/y"]}'
    assert rewrite_json(body, ROOT, PROXY) == (
        b'{"t": "see \\"http://h:5000/api/x\\" here", "u": ["https://tw.example/ows/proxy/geo/y"]}')


def test_a_mapped_url_that_needs_escapes_is_escaped():
    body = '{"u": "http://h:5000/api/caf\u00e9?q=\\"x\\""}'.encode()
    out = json.loads(rewrite_json(body, ROOT, PROXY))
    assert out["u"].startswith(PROXY + "/caf") and out["u"].endswith('"x"')
