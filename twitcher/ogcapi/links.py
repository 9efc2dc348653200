"""Links in JSON answers, sent back through the proxy (``links[].href``, job and output URLs).

A backend writes its own address into its answers (OGC API ``links``, ``processDescriptionURL``,
by-reference outputs, GeoJSON feature links). Every JSON string that is exactly a URL under the
service's URL is replaced by the proxy URL plus the part that follows, as
:mod:`twitcher.ows.rewrite` does for XML: the same :class:`~twitcher.ows.rewrite.UrlMapper` decides.

Like the XML rewriting this is a substitution on the string literals of the document, not a
parse and serialise round trip: numbers (``1e400``, ``0.10``), key order and formatting stay byte
for byte, and a document in which no literal names the backend's host is returned untouched
without further work. Only UTF-8 JSON (the only encoding RFC 8259 allows between systems) is
rewritten; anything else passes as it came.

Setting the backend's own public URL to the proxy URL (pygeoapi ``server.url``) makes all of
this unnecessary, and is the cheaper option: see ``docs/ogcapi.rst``.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..ows.rewrite import url_mapper

log = logging.getLogger(__name__)

_JSON_SUBTYPE = re.compile(r"^application/(?:json|[\w.+-]+\+json)$")
# A JSON string literal that starts with http:// or https:// (the slashes maybe escaped as \/).
# In valid JSON a literal opens after [ { , : or whitespace, and a quote inside a literal is
# always escaped (preceded by a backslash): so the lookbehind finds only opening quotes, and the
# regex engine skips every other literal in C, without a Python call per string. UTF-8
# continuation bytes are never " or \, so the pattern is safe on the document's bytes.
_URL_STRING = re.compile(rb'(?<=[\[{,:\s])"https?:(?:\\?/){2}[^"\\]*(?:\\.[^"\\]*)*"', re.IGNORECASE)


def is_json_media_type(content_type: Optional[str]) -> bool:
    """True for ``application/json``, ``application/geo+json`` and any ``application/*+json``."""
    if not content_type:
        return False
    return bool(_JSON_SUBTYPE.match(content_type.split(";", 1)[0].strip().lower()))


def api_root(service_url: str) -> str:
    """The registered URL of an OGC API as a directory (its path ending in ``/``), query dropped:
    what lies below the landing page is what the proxy reaches under ``/ows/proxy/<name>/``."""
    parts = urlsplit(service_url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def map_json_url(value: str, service_url: str, proxy_url: str) -> Optional[str]:
    """The proxy URL for ``value`` when it points under ``service_url``, else None.

    For a directory ``service_url`` (an OGC API root, ending in ``/``) the root without its
    slash (``http://h/api?f=json``) is the landing page too.
    """
    mapper = url_mapper(service_url, proxy_url)
    mapped = mapper.map(value)
    if mapped is None and service_url.endswith("/"):
        bare = service_url[:-1]
        if value.startswith(bare) and value[len(bare):len(bare) + 1] in ("", "?", "#"):
            mapped = mapper.map(service_url + value[len(bare):])
    return mapped


def rewrite_json(document: bytes, service_url: str, proxy_url: str) -> bytes:
    """``document`` with every string literal that is a URL under ``service_url`` mapped to the proxy."""
    host = urlsplit(service_url).hostname
    if not host or not re.search(re.escape(host.encode("idna")), document, re.IGNORECASE):
        return document
    if document.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in document[:4]:
        return document  # a BOM or UTF-16/32: not JSON as RFC 8259 sends it

    def replace(match: re.Match) -> bytes:
        literal = match.group(0)
        try:
            # Without escapes the literal is its value (the usual case, and 3x cheaper).
            value = json.loads(literal) if b"\\" in literal else literal[1:-1].decode("utf-8")
        except ValueError:  # broken escapes or bytes that are not UTF-8: leave it
            return literal
        mapped = map_json_url(value, service_url, proxy_url)
        if mapped is None:
            return literal
        if b"\\" in literal or any(c in mapped for c in '"\\') or not mapped.isprintable():
            return json.dumps(mapped, ensure_ascii=False).encode("utf-8")
        return b'"' + mapped.encode("utf-8") + b'"'

    return _URL_STRING.sub(replace, document)
