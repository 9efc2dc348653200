"""Property: without a valid token, no request that needs one ever reaches a handler, however it is spelled."""
from __future__ import annotations

from urllib.parse import quote, unquote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.test_tweens import Recorder, build_guarded_app

PUBLIC = {"wps": {"getcapabilities", "describeprocess"}, "wms": {"getcapabilities"}}
PATHS = {"/ows/proxy/emu": "wps", "/ows/proxy/maps": "wms", "/ows/wps": "wps",
         "/ows/proxy/emu/x.nc": None, "/ows/wps/status": None, "/ows/other": None, "/ows": None}


def _spelled(key: str):
    """Ways a backend may still read ``key``: case, percent-encoding, padding, Unicode folding."""
    return st.sampled_from([
        key, key.upper(), key.title(), key.swapcase(), quote(key[0], safe="") + key[1:],
        "%" + format(ord(key[0]), "02X") + key[1:], key + "%20", "+" + key, key.replace("s", "ſ"),
        key.replace("i", "ı"), key + "%00",
    ])


keys = st.one_of(
    _spelled("request"), _spelled("service"), _spelled("version"),
    st.sampled_from(["access_token", "token", "TOKEN", "identifier", "DataInputs", "layers", ""]),
    st.text(alphabet="abcdefqrstuvwxyzRSTQE%;=+ ", max_size=10),
)
values = st.one_of(
    st.sampled_from(["GetCapabilities", "getcapabilities", "DescribeProcess", "Execute", "execute", "GetMap",
                     "GetStatus", "GetResult", "Dismiss", "WPS", "wps", "WMS", "1.0.0", "2.0.0", "",
                     "GetCapabilities%20", "GetCapabilities;request=Execute", "Get%43apabilities",
                     "a=1;request=Execute", "x;request=Execute", "not-a-valid-token"]),
    st.text(max_size=12).map(lambda text: quote(text, safe="")),
)


@st.composite
def pairs(draw):
    """Random pairs, often mixed into a well-formed public request so that the tween lets some through."""
    items = draw(st.lists(st.tuples(keys, values), max_size=5))
    if draw(st.booleans()):
        items += [("service", draw(st.sampled_from(["WPS", "WMS"]))),
                  ("request", draw(st.sampled_from(["GetCapabilities", "DescribeProcess"])))]
    return draw(st.permutations(items))


def query_of(items) -> str:
    return "&".join(f"{k}={v}" for k, v in items)


def backend_readings(query_string: str):
    """Every way some backend might read the decisive keys: split on & (and ;), first or last
    value, keys folded by lower, casefold or upper, whitespace and NUL stripped."""
    for separators in ("&", "&;"):
        text = query_string
        for sep in separators[1:]:
            text = text.replace(sep, "&")
        items = [(unquote_plus(k), unquote_plus(v)) for k, _, v in (p.partition("=") for p in text.split("&") if p)]
        for fold in (str.lower, str.casefold, lambda k: k.upper().lower()):
            reading = {}
            for key, value in items:
                reading.setdefault(fold(key.strip().strip("\x00").strip()), []).append(value)
            yield reading


def assert_forwarded_request_is_public(path: str, query_string: str, service_type) -> None:
    assert service_type is not None, f"{path} needs a token but was handled"
    for reading in backend_readings(query_string):
        for value in reading.get("request", []):
            assert value.strip().lower() in PUBLIC[service_type], (path, query_string)
        for value in reading.get("service", []):
            assert value.strip().lower() == service_type, (path, query_string)
        assert "access_token" not in reading and "token" not in reading


@pytest.fixture(scope="module")
def property_app(tmp_path_factory):
    recorder = Recorder()
    settings_ = {"twitcher.db_url": f"sqlite:///{tmp_path_factory.mktemp('props')}/t.sqlite",
                 "twitcher.password": "x", "twitcher.wps": "false"}
    return build_guarded_app(settings_, recorder), recorder


HEADERS = st.fixed_dictionaries({}, optional={
    "Access-Token": st.sampled_from(["not-a-valid-token", "x"]),
    "Authorization": st.sampled_from(["Bearer not-a-valid-token", "Basic YTpi", "bearer x"]),
    "X-Ssl-Client-Verify": st.just("SUCCESS"),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(PATHS)), items=pairs(), headers=HEADERS)
def test_no_query_without_a_valid_token_reaches_the_handler_unless_public(property_app, path, items, headers):
    app, recorder = property_app
    recorder.calls.clear()
    query = query_of(items)
    response = app.get(f"{path}?{query}" if query else path, headers=headers, expect_errors=True)
    if not recorder.calls:
        assert response.status_int in (400, 401, 404, 405)
        assert response.content_type == "text/xml"
        return
    assert response.status_int == 200
    seen = recorder.last
    assert_forwarded_request_is_public(path, seen["query"], PATHS[path])
    assert "HTTP_ACCESS_TOKEN" not in seen["environ"]
    assert not seen["environ"].get("HTTP_AUTHORIZATION", "").lower().startswith("bearer")
    assert not [k for k in seen["environ"] if k.startswith("HTTP_X_SSL_")]


ROOTS = st.sampled_from(["GetCapabilities", "DescribeProcess", "Execute", "GetStatus", "Dismiss", "GetMap", "Foo"])
NAMESPACES = st.sampled_from(["http://www.opengis.net/wps/1.0.0", "http://www.opengis.net/wps/2.0", ""])


@st.composite
def xml_bodies(draw) -> bytes:
    root, namespace = draw(ROOTS), draw(NAMESPACES)
    attributes = draw(st.dictionaries(st.sampled_from(["service", "version", "Service", "request"]),
                                      st.sampled_from(["WPS", "wps", "WMS", "1.0.0", "Execute", ""]), max_size=3))
    element = etree.Element(f"{{{namespace}}}{root}" if namespace else root, attrib=attributes)
    if draw(st.booleans()):
        identifier = etree.SubElement(element, "{http://www.opengis.net/ows/1.1}Identifier")
        identifier.text = draw(st.text(alphabet="abcé€ <>&;", max_size=8))
    body = etree.tostring(element, xml_declaration=draw(st.booleans()), encoding=draw(st.sampled_from(
        ["UTF-8", "UTF-16", "ISO-8859-1"])))
    mutation = draw(st.sampled_from(["none", "doctype", "truncate", "junk", "second_root"]))
    if mutation == "doctype":
        body = b'<!DOCTYPE x [<!ENTITY e "Execute">]>' + body.split(b"?>", 1)[-1]
    elif mutation == "truncate":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif mutation == "junk":
        body = body + draw(st.binary(min_size=1, max_size=16))
    elif mutation == "second_root":
        body = body + b"<Execute service='WPS'/>"
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/ows/proxy/emu", "/ows/wps", "/ows/proxy/emu/x"]), body=xml_bodies(),
       query=st.sampled_from(["", "request=GetCapabilities", "service=WPS", "access_token=not-a-valid-token"]),
       headers=HEADERS)
def test_no_body_without_a_valid_token_reaches_the_handler_unless_public(property_app, path, body, query, headers):
    app, recorder = property_app
    recorder.calls.clear()
    response = app.post(f"{path}?{query}", body, content_type="text/xml", headers=headers, expect_errors=True)
    if not recorder.calls:
        assert response.status_int in (400, 401, 413)
        return
    assert PATHS.get(path) is not None, f"{path} needs a token but was handled"
    seen = recorder.last
    assert seen["body"] == body
    # Whatever parser the backend uses, a body we let through has one root, and it is public.
    root = etree.fromstring(seen["body"], etree.XMLParser(resolve_entities=False, no_network=True, recover=True))
    assert etree.QName(root).localname.lower() in PUBLIC["wps"]
    assert_forwarded_request_is_public(path, seen["query"], "wps")
