"""URL rewriting of backend XML (twitcher/ows/rewrite.py): pure functions, real OGC documents."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Tuple
from urllib.parse import unquote, urlsplit

import pytest
from lxml import etree

from twitcher.ows.rewrite import (
    charset_param,
    document_encoding,
    is_xml_media_type,
    map_url,
    parse_link_header,
    rewrite_document,
    rewrite_link_header,
    rewrite_text,
)
from twitcher.proxy.view import target_url

FIXTURES = Path(__file__).parent / "fixtures"
PROXY = "https://twitcher.example/ows/proxy/svc"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"

#: fixture, registered service URL, XPath of the operation URLs that must lead to the proxy.
DOCUMENTS = [
    ("wps_1.0.0_capabilities.xml", "http://backend.example:8080/wps",
     "//ows:OperationsMetadata//ows:HTTP/*/@xlink:href"),
    ("wps_2.0.0_capabilities.xml", "http://backend.example:8080/services/hydro/wps",
     "//ows2:OperationsMetadata//ows2:HTTP/*/@xlink:href"),
    ("wms_1.1.1_capabilities.xml", "http://backend.example:8080/cgi-bin/mapserv?map=/maps/world.map",
     "//Service/OnlineResource/@xlink:href | //DCPType//OnlineResource/@xlink:href"),
    ("wms_1.3.0_capabilities.xml", "http://backend.example/geoserver/ows",
     "//wms:Service/wms:OnlineResource/@xlink:href | //wms:DCPType//wms:OnlineResource/@xlink:href"),
    ("wfs_2.0.0_capabilities.xml", "https://backend.example/geoserver/wfs",
     "//ows:OperationsMetadata//ows:HTTP/*/@xlink:href"),
    ("wcs_2.0.1_capabilities.xml", "http://backend.example:8080/rasdaman/ows",
     "//ows2:OperationsMetadata//ows2:HTTP/*/@xlink:href"),
    ("wps_1.0.0_execute_response.xml", "http://backend.example:8080/wps",
     "/wps:ExecuteResponse/@statusLocation | //wps:Reference[starts-with(@href, 'http://backend')]/@href"),
]
NAMESPACES = {
    "ows": "http://www.opengis.net/ows/1.1", "ows2": "http://www.opengis.net/ows/2.0",
    "wps": "http://www.opengis.net/wps/1.0.0", "wms": "http://www.opengis.net/wms",
    "xlink": "http://www.w3.org/1999/xlink",
}


def _parse(document: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(document, parser)


def _values(root: etree._Element) -> Iterator[Tuple[str, str]]:
    """Every attribute value and text of a document, labelled by where it is."""
    for element in root.iter():
        where = root.getroottree().getpath(element)
        for name, value in sorted(element.attrib.items()):
            yield f"{where}/@{name}", value
        yield f"{where}/text()", element.text or ""
        yield f"{where}/tail()", element.tail or ""


def _normal(url: str) -> tuple:
    """A URL as the backend understands it: scheme and host case, default port, empty query."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}[parts.scheme.lower()]
    return parts.scheme.lower(), parts.hostname.lower(), port, parts.path or "/", parts.query.rstrip("&")


def _is_backend_url(value: str, service_url: str) -> bool:
    """Independent of the code under test: same origin, path in the service's directory."""
    value = value.strip()
    if not _on_backend_origin(value, service_url):
        return False
    url, service = _normal(value), _normal(service_url)
    directory = service[3][: service[3].rfind("/") + 1]
    return url[3].startswith(directory)


def _on_backend_origin(value: str, service_url: str) -> bool:
    value = value.strip()
    if not value.lower().startswith(("http://", "https://")) or " " in value:
        return False
    return _normal(value)[:3] == _normal(service_url)[:3]


def _through_the_proxy(proxied: str, service_url: str) -> str:
    """Where the proxy forwards a rewritten URL: WSGI decodes the path, the proxy resolves it."""
    assert proxied.startswith(PROXY)
    rest = urlsplit(proxied[len(PROXY):])
    return target_url(service_url, rest.query, unquote(rest.path[1:]) if rest.path else None)


def _load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize(("name", "service_url", "operations"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_operation_urls_of_real_documents_lead_to_the_proxy(name, service_url, operations):
    rewritten = _parse(rewrite_document(_load(name), service_url, PROXY))
    hrefs: List[str] = rewritten.xpath(operations, namespaces=NAMESPACES)
    assert hrefs
    assert all(h.startswith(PROXY) for h in hrefs), hrefs


@pytest.mark.parametrize(("name", "service_url", "operations"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_only_backend_urls_change_and_each_leads_back_to_the_original(name, service_url, operations):
    original = _load(name)
    before = list(_values(_parse(original)))
    after = list(_values(_parse(rewrite_document(original, service_url, PROXY))))
    assert [where for where, _ in before] == [where for where, _ in after]
    changed = 0
    for (where, old), (_, new) in zip(before, after):
        if _is_backend_url(old, service_url):
            changed += 1
            assert new.strip() != old.strip(), f"{where} still points at the backend"
            assert _normal(_through_the_proxy(new.strip(), service_url)) == _normal(old.strip()), where
        elif _on_backend_origin(old, service_url):  # outside the directory: the proxy cannot lead there
            assert new.strip() == "", f"{where} names the backend outside the service's directory"
        else:
            assert new == old, f"{where} changed although it is no backend URL"
    assert changed >= 3


@pytest.mark.parametrize(("name", "service_url", "operations"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_document_keeps_its_character_set_and_declaration(name, service_url, operations):
    original = _load(name)
    encoding = document_encoding(original)
    rewritten = rewrite_document(original, service_url, PROXY)
    first_line = original.decode(encoding).splitlines()[0]
    assert rewritten.decode(encoding).splitlines()[0] == first_line
    before = "".join(t for _, t in _values(_parse(original)) if not t.startswith("http"))
    after = "".join(t for _, t in _values(_parse(rewritten)) if not t.startswith("http"))
    assert before == after


def test_documents_without_backend_urls_come_back_identical():
    original = _load("wfs_2.0.0_capabilities.xml")
    assert rewrite_document(original, "http://elsewhere.example/wfs", PROXY) is original


@pytest.mark.parametrize(("url", "service_url", "expected"), [
    ("http://h:5000/wps", "http://h:5000/wps", PROXY),
    ("http://h:5000/wps?service=WPS&request=GetCapabilities", "http://h:5000/wps",
     PROXY + "?service=WPS&request=GetCapabilities"),
    ("http://h:5000/outputs/a/b.nc", "http://h:5000/wps", PROXY + "/outputs/a/b.nc"),
    ("http://h:5000/outputs/a%20b.nc#part", "http://h:5000/wps", PROXY + "/outputs/a%20b.nc#part"),
    ("http://h/api/jobs/1", "http://h/api/", PROXY + "/jobs/1"),
    ("http://h/api/", "http://h/api/", PROXY),
    ("http://H:80/wps", "http://h/wps", PROXY),
    ("https://h:443/wps", "https://h/wps", PROXY),
    ("http://h/cgi/ms?map=a.map&request=GetMap", "http://h/cgi/ms?map=a.map", PROXY + "?request=GetMap"),
    ("http://h/cgi/ms?map=a.map", "http://h/cgi/ms?map=a.map", PROXY),
    ("http://h/cgi/ms?map=other.map", "http://h/cgi/ms?map=a.map", PROXY + "?map=other.map"),
    ("http://h", "http://h", PROXY),
])
def test_urls_in_the_service_directory_map_to_the_proxy(url, service_url, expected):
    assert map_url(url, service_url, PROXY + "/") == expected


@pytest.mark.parametrize(("url", "service_url"), [
    ("http://other:5000/wps", "http://h:5000/wps"),
    ("http://h:5001/wps", "http://h:5000/wps"),
    ("https://h:5000/wps", "http://h:5000/wps"),
    ("http://h/api", "http://h/api/"),
    ("http://h/other/x", "http://h/api/wps"),
    ("http://h:notaport/wps", "http://h/wps"),
    ("mailto:someone@h", "http://h/wps"),
])
def test_urls_outside_the_service_directory_are_not_mapped(url, service_url):
    assert map_url(url, service_url, PROXY) is None


@pytest.mark.parametrize(("content_type", "expected"), [
    ("text/xml", True), ("application/xml; charset=ISO-8859-1", True), ("Application/XML", True),
    ("application/vnd.ogc.wms_xml", True), ("application/vnd.ogc.se_xml", True),
    ("application/vnd.ogc.gml", True), ("application/vnd.ogc.wfs_xml; charset=utf-8", True),
    ("application/wms+xml", True), ("text/gml+xml", True), ("application/vnd.ogc.wms", False),
    ("application/atom+xml", True), ("application/gml+xml; version=3.2", True),
    ("text/html", False), ("application/json", False), ("image/png", False), ("", False), (None, False),
    ("application/xml-dtd", False),
])
def test_xml_is_recognised_by_media_type(content_type, expected):
    assert is_xml_media_type(content_type) is expected


@pytest.mark.parametrize(("document", "http_charset", "expected"), [
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>', None, "ISO-8859-1"),
    (b"<?xml version='1.0' encoding='utf-8'?><a/>", None, "utf-8"),
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>', "utf-8", "utf-8"),
    (b"\xef\xbb\xbf<a/>", None, "utf-8-sig"),
    ("<a/>".encode("utf-16"), None, "utf-16"),
    ("<?xml version='1.0'?><a/>".encode("utf-16-be"), None, "utf-16-be"),
    (b"<a/>", None, "utf-8"),
])
def test_document_encoding_follows_http_then_bom_then_declaration(document, http_charset, expected):
    assert document_encoding(document, http_charset) == expected


def test_charset_parameter_is_read_from_the_content_type():
    assert charset_param('text/xml; charset="ISO-8859-1"') == "ISO-8859-1"
    assert charset_param("text/xml;version=1;Charset=utf-8") == "utf-8"
    assert charset_param("text/xml") is None


def test_escaped_ampersands_stay_escaped():
    document = '<a href="http://h/wps?a=1&amp;b=2"/>'
    assert rewrite_text(document, "http://h/wps", PROXY) == f'<a href="{PROXY}?a=1&amp;b=2"/>'


def test_quotes_are_escaped_for_the_attribute_they_are_in():
    document = "<a x='http://h/out/it&apos;s.nc' y=\"http://h/out/say&quot;hi&quot;.nc\"/>"
    rewritten = rewrite_text(document, "http://h/wps", PROXY)
    assert _parse(rewritten.encode()).get("x") == PROXY + "/out/it's.nc"
    assert _parse(rewritten.encode()).get("y") == PROXY + '/out/say"hi".nc'


def test_text_nodes_that_are_exactly_a_url_are_rewritten_and_others_not():
    document = "<r><u>\n  http://h/out/x.nc\n</u><t>see http://h/out/x.nc</t><c><![CDATA[http://h/wps]]></c></r>"
    root = _parse(rewrite_text(document, "http://h/wps", PROXY).encode())
    assert root.findtext("u").strip() == PROXY + "/out/x.nc"
    assert root.findtext("t") == "see http://h/out/x.nc"
    assert root.findtext("c") == "http://h/wps"


def test_a_non_ascii_public_url_is_percent_encoded():
    rewritten = rewrite_text('<a href="http://h/wps"/>', "http://h/wps", "https://tw.example/ows/proxy/déjà")
    assert rewritten == '<a href="https://tw.example/ows/proxy/d%C3%A9j%C3%A0"/>'


def test_a_document_that_lies_about_its_charset_is_passed_on_unchanged():
    document = '<?xml version="1.0" encoding="UTF-8"?><a href="http://h/wps">\xe9</a>'.encode("latin-1")
    assert rewrite_document(document, "http://h/wps", PROXY) is document


def test_non_ascii_text_survives_in_latin_1_and_utf_16():
    text = '<?xml version="1.0" encoding="{}"?><a href="http://h/wps">Jörg</a>'
    for encoding in ("ISO-8859-1", "UTF-16"):
        rewritten = rewrite_document(text.format(encoding).encode(encoding), "http://h/wps", PROXY)
        assert rewritten.decode(encoding) == text.format(encoding).replace("http://h/wps", PROXY)


@pytest.mark.parametrize("charset", ["x-unknown", "undefined", "idna", "punycode", "base64", "rot13", "hex",
                                     "utf-8\x00", "utf-16", "zlib"])
def test_a_charset_python_cannot_use_leaves_the_document_unchanged(charset):
    document = b'<?xml version="1.0"?><r href="http://h:5000/wps?a=1">caf\xc3\xa9 \xff</r>'
    assert rewrite_document(document, "http://h:5000/wps", PROXY, charset) in (
        document, rewrite_document(document, "http://h:5000/wps", PROXY, "utf-8"))


@pytest.mark.parametrize("declared", ["x-unknown", "undefined", "idna", "base64", "uu_codec"])
def test_a_bogus_encoding_declaration_leaves_the_document_unchanged(declared):
    document = f'<?xml version="1.0" encoding="{declared}"?><r href="http://h:5000/wps?a=1"/>'.encode()
    assert rewrite_document(document, "http://h:5000/wps", PROXY) == document


@pytest.mark.parametrize(("value", "expected"), [
    ('<a>; rel=next', [("a", [("rel", "next")])]),
    ('<a>;rel="x, y";title*=UTF-8\'de\'n%c3%a4chstes, <b>', [("a", [("rel", '"x, y"'),
                                                                  ("title*", "UTF-8'de'n%c3%a4chstes")]),
                                                            ("b", [])]),
    ('<a>; rel="say \\"hi\\", ok"', [("a", [("rel", '"say \\"hi\\", ok"')])]),
    (' , <a>,, <b> ,', [("a", []), ("b", [])]),
    ('', []),
    ('a; rel=next', None),
    ('<a>; rel="open', None),
    ('<a> junk', None),
])
def test_link_headers_are_parsed_as_rfc_8288_says(value, expected):
    assert parse_link_header(value) == expected


BACKEND_WPS = "http://h:5000/svc/wps"


@pytest.mark.parametrize("value", [
    '<https://elsewhere.example/a>;rel=next',
    '<https://elsewhere.example/a>;  anchor=https://elsewhere.example/b ;rel="x"',
    '<https://elsewhere.example/a>;f-8kend.example:8080/s?service=WPS',
])
def test_a_link_header_naming_no_backend_passes_byte_for_byte(value):
    """Found by the headers fuzzer: re-serialising changed the spacing of a header that named
    nothing of ours, which no client asked for."""
    assert rewrite_link_header(value, BACKEND_WPS, BACKEND_WPS, PROXY) == value


def test_a_link_header_naming_the_backend_is_rewritten_and_its_other_links_kept():
    value = '<http://h:5000/svc/outputs/a.nc>;rel=item, <https://elsewhere.example/b>;rel=next'
    assert rewrite_link_header(value, BACKEND_WPS, BACKEND_WPS, PROXY) == (
        f'<{PROXY}/outputs/a.nc>; rel=item, <https://elsewhere.example/b>; rel=next')


def test_a_link_anchored_on_the_backend_outside_the_service_is_dropped():
    value = '<https://elsewhere.example/a>; anchor="http://h:5000/admin", <https://elsewhere.example/b>'
    assert rewrite_link_header(value, BACKEND_WPS, BACKEND_WPS, PROXY) == "<https://elsewhere.example/b>"
