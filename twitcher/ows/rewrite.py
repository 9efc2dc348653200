"""URL rewriting of backend XML documents, so that every link in them leads back through the proxy.

A backend only knows its own address. Its capabilities documents (operation URLs of WPS, WMS, WFS
and WCS), WPS ``statusLocation`` attributes and output ``Reference`` hrefs point at it, but in a real
deployment the client can reach only Twitcher. Each URL on the backend's origin *under the service's
base directory* (the registered path up to its last ``/``) is replaced by the public proxy URL plus
the part that follows, which is exactly what the proxy's ``extra_path`` resolution turns back into
the original URL (see :mod:`twitcher.proxy.view`):

    service ``http://h:5000/wps``          proxy ``https://tw/ows/proxy/emu``
    ``http://h:5000/wps?service=WPS``   -> ``https://tw/ows/proxy/emu?service=WPS``
    ``http://h:5000/outputs/x.nc``      -> ``https://tw/ows/proxy/emu/outputs/x.nc``
    ``http://other:8080/wps``           -> unchanged (another origin)
    ``http://h:5000/x/../other``        -> emptied (on the origin, outside the directory)

A URL on the backend's origin but outside the service's directory (a service registered at
``/alias/x/wps`` whose outputs live at ``/outputs/``) is *emptied*, not left alone and not mapped:
the client cannot reach the backend, so the backend URL would only tell it the backend's address,
and mapping the rest of the origin would open through the proxy what nobody registered. Put the
outputs under the service's directory (PyWPS ``outputurl``), or register the outputs' directory as
a service of its own. Response headers follow the same rules (:func:`rewrite_reference`).

The rewriting is a text substitution on attribute values and text nodes that are exactly a URL,
not a parse and serialise round trip: it is about eight times faster (45 ms against 350 ms for a
1 MiB WPS capabilities document), keeps the document byte for byte outside the rewritten URLs
(namespace prefixes, comments, formatting), and handles XML escaping (``&amp;``) and the
document's character set explicitly. These are pure functions without Pyramid, so they are tested
on their own (``tests/test_ows_rewrite.py``).
"""
from __future__ import annotations

import codecs
import logging
import re
from functools import lru_cache
from typing import Optional
from urllib.parse import quote, urljoin, urlsplit

log = logging.getLogger(__name__)

# XML by its media type: the generic ones, any +xml suffix (RFC 6839: application/gml+xml,
# application/wps+xml...), and the pre-suffix OGC types (application/vnd.ogc.wms_xml,
# application/vnd.ogc.se_xml, application/vnd.ogc.gml).
_XML_SUBTYPE = re.compile(r"^(?:text/xml|application/xml|(?:text|application)/[\w.+-]+\+xml"
                          r"|application/vnd\.ogc\.(?:[\w.-]+_xml|gml))$")
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z][\w.:-]*)["']""")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))

_CHAR_REF = re.compile(r"&(?:#(\d+)|#x([0-9A-Fa-f]+)|(amp|lt|gt|quot|apos));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What may stay unescaped when the proxy URL is made ASCII: the URL's own reserved characters.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def is_xml_media_type(content_type: Optional[str]) -> bool:
    """True for ``text/xml``, ``application/xml``, ``*/*+xml`` and the OGC ``vnd.ogc`` XML types,
    whatever the parameters."""
    if not content_type:
        return False
    return bool(_XML_SUBTYPE.match(content_type.split(";", 1)[0].strip().lower()))


def charset_param(content_type: Optional[str]) -> Optional[str]:
    """The ``charset`` parameter of a Content-Type header, if any."""
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"'):
            return value.strip().strip('"')
    return None


def document_encoding(document: bytes, http_charset: Optional[str] = None) -> str:
    """The codec that reads ``document``: the HTTP charset wins (RFC 7303), then a BOM, then the
    XML declaration, then UTF-8 (the XML default)."""
    if http_charset:
        return http_charset
    for bom, codec in _BOMS:
        if document.startswith(bom):
            return codec
    if document[:4] in (b"\x00<\x00?", b"\x00<\x00\n"):
        return "utf-16-be"
    if document[:4] in (b"<\x00?\x00", b"<\x00\n\x00"):
        return "utf-16-le"
    declared = _DECLARED_ENCODING.match(document[:200])
    return declared.group(1).decode("ascii") if declared else "utf-8"


def _origin(parts) -> Optional[tuple]:
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def base_directory(path: str) -> str:
    """The directory of a service path: everything up to and including its last ``/``."""
    return path[: path.rfind("/") + 1] or "/"


class UrlMapper:
    """Maps backend URLs of one service to the proxy; immutable, shared through :func:`url_mapper`.

    The registered query string is dropped from a URL of the service itself, because the proxy
    adds it again when it forwards (``?map=x.map&request=GetMap`` becomes ``?request=GetMap``).
    """

    def __init__(self, service_url: str, proxy_url: str) -> None:
        service = urlsplit(service_url)
        self.origin = _origin(service)
        self.scheme = service.scheme.lower()
        self.path = service.path or "/"
        self.directory = base_directory(self.path)
        self.query = service.query
        self.proxy_url = quote(proxy_url.rstrip("/"), safe=_URL_SAFE)
        self.values = _values_pattern(service)

    def map(self, url: str) -> Optional[str]:
        """The proxy URL for any ``url`` pointing into the service's base directory, else None."""
        try:
            target = urlsplit(url)
        except ValueError:  # e.g. "http://[x": not a URL, so not one of the backend's
            return None
        if self.origin is None or _origin(target) != self.origin:
            return None
        return self.map_on_origin(target.path, target.query, target.fragment)

    def map_on_origin(self, path: str, query: str, fragment: str) -> Optional[str]:
        """Like :meth:`map` for the parts of a URL already known to be on the backend's origin."""
        path = path or "/"
        if path == self.path:
            if self.query and (query == self.query or query.startswith(self.query + "&")):
                query = query[len(self.query) + 1:]
            mapped = self.proxy_url
        elif path.startswith(self.directory):
            mapped = self.proxy_url + "/" + path[len(self.directory):]
        else:
            return None
        if query:
            mapped += "?" + query
        if fragment:
            mapped += "#" + fragment
        return mapped



@lru_cache(maxsize=256)
def url_mapper(service_url: str, proxy_url: str) -> UrlMapper:
    """The mapper of one service, built once: building it (URL splitting, a regex) cost more than
    rewriting a small ExecuteResponse."""
    return UrlMapper(service_url, proxy_url)

def _values_pattern(service) -> re.Pattern:
    """A regex for URLs on the service's origin, from ``://`` on (the scheme is checked apart).

    Starting at the literal ``://`` lets the regex engine skip through a large document at C
    speed, several times faster than parsing it; the host is matched without regard to case and
    the default port may be written or not. What follows must start a path, a query or a fragment
    (``http://h.evil`` is not ``http://h``).
    """
    host = (service.hostname or "").lower()
    host = r"\[" + re.escape(host) + r"\]" if ":" in host else re.escape(host)
    try:
        port = service.port
    except ValueError:
        port = None
    default = _DEFAULT_PORTS.get(service.scheme.lower())
    port_part = f"(?::{default})?" if port in (None, default) else f":{port}"
    return re.compile(rf"://(?i:{host}){port_part}(?=[/?#<\"'\s]|$)(?P<rest>[^\"'<>\s]*)")


_SPACE = " \t\r\n"


def _delimiter(document: str, start: int, end: int) -> Optional[str]:
    """How the URL at ``document[start:end]`` stands in the document: as a whole attribute value
    (its quote character), as a whole text node (``""``), or neither (None: leave it alone)."""
    before = start
    while before > 0 and document[before - 1] in _SPACE:
        before -= 1
    after = end
    while after < len(document) and document[after] in _SPACE:
        after += 1
    opener = document[before - 1] if before > 0 else ""
    closer = document[after] if after < len(document) else ""
    if opener in ("\"", "'") and closer == opener:
        equals = before - 1
        while equals > 0 and document[equals - 1] in _SPACE:
            equals -= 1
        return opener if equals > 0 and document[equals - 1] == "=" else None
    if opener == ">" and closer == "<":
        return ""
    return None


def map_url(url: str, service_url: str, proxy_url: str) -> Optional[str]:
    """The proxy URL for ``url`` when it points into the service's base directory, else None."""
    return url_mapper(service_url, proxy_url).map(url)


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        decimal, hexadecimal, name = match.groups()
        if name:
            return _NAMED[name]
        return chr(int(decimal) if decimal else int(hexadecimal, 16))

    return _CHAR_REF.sub(replace, text) if "&" in text else text


def _escape(text: str, quote_char: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote_char == '"':
        return text.replace('"', "&quot;")
    if quote_char == "'":
        return text.replace("'", "&apos;")
    return text


def rewrite_text(document: str, service_url: str, proxy_url: str) -> str:
    """Rewrite every URL value of an XML document held as text; see the module docstring.

    Only attribute values and text nodes that are exactly one URL (give or take surrounding
    whitespace) are rewritten; a URL inside prose, comments or CDATA-like text is left alone.
    """
    mapper = url_mapper(service_url, proxy_url)
    pieces, done = [], 0
    for match in mapper.values.finditer(document):
        start = match.start() - len(mapper.scheme)
        if start < 0 or document[start:match.start()].lower() != mapper.scheme:
            continue
        quote_char = _delimiter(document, start, match.end())
        if quote_char is None:
            continue
        raw = match.group("rest")
        try:
            rest, _, fragment = (_unescape(raw) if "&" in raw else raw).partition("#")
        except (ValueError, OverflowError):  # a character reference beyond Unicode: not a URL we can map
            continue
        path, _, query = rest.partition("?")
        # A URL on the backend's origin outside the service's directory cannot be reached
        # through the proxy: it is emptied rather than handed to the client (see module docstring).
        mapped = mapper.map_on_origin(path, query, fragment) or ""
        pieces += [document[done:start], _escape(mapped, quote_char)]
        done = match.end()
    if not pieces:
        return document
    pieces.append(document[done:])
    return "".join(pieces)


def rewrite_document(document: bytes, service_url: str, proxy_url: str,
                     http_charset: Optional[str] = None) -> bytes:
    """Rewrite the URLs of an XML document in its own character set.

    A document that cannot be decoded with the charset it declares is returned unchanged: a broken
    backend answer is passed on as it is rather than being made worse.
    """
    encoding = document_encoding(document, http_charset)
    try:
        text = document.decode(encoding)
    except (LookupError, ValueError):  # unknown codec, not a text codec, undecodable (UnicodeError)
        log.warning("backend XML is not readable as %.40r; passed on without rewriting", encoding)
        return document
    rewritten = rewrite_text(text, service_url, proxy_url)
    if rewritten == text:
        return document
    try:
        return rewritten.encode(encoding, errors="xmlcharrefreplace")
    except (LookupError, ValueError):  # a codec that decodes but cannot encode (e.g. idna)
        log.warning("backend XML cannot be written back as %.40r; passed on without rewriting", encoding)
        return document


# -- URLs in response headers ------------------------------------------------------------------


def rewrite_reference(reference: str, base_url: str, service_url: str, proxy_url: str) -> Optional[str]:
    """A URL reference from a backend header (``Location``, ``Content-Location``, a ``Link``
    target), for the client: None when it must be dropped.

    The reference is resolved against ``base_url`` (the URL the request went to: RFC 9110 says
    so for ``Location``), whatever its form (absolute, ``//host/...``, ``/path``, ``path``). Into
    the service's directory it becomes a proxy URL; elsewhere on the backend's origin, where the
    proxy cannot lead, it is dropped; on any other origin it passes as it came.
    """
    mapper = url_mapper(service_url, proxy_url)
    try:
        absolute = urljoin(base_url, reference.strip())
        target = urlsplit(absolute)
        origin = _origin(target)
    except ValueError:  # e.g. a broken IPv6 literal: nothing can be said about it, so drop it
        return None
    if mapper.origin is None or origin != mapper.origin:
        return reference
    return mapper.map_on_origin(target.path, target.query, target.fragment)


# A link-value of RFC 8288: "<" URI-Reference ">" then parameters, a quoted string may hold , ; < >.
_LINK_TARGET = re.compile(r"\s*<([^>]*)>")
_LINK_PARAM = re.compile(r"""\s*;\s*([^\s=;,]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s;,"]*))?""")
_LINK_SEPARATOR = re.compile(r"\s*(?:,|$)")


def parse_link_header(value: str) -> Optional[list]:
    """The link-values of a ``Link`` header as ``(target, [(name, raw value or None), ...])``;
    None when the header does not have the RFC 8288 syntax."""
    links, position = [], 0
    while True:
        while position < len(value) and value[position] in " \t,":
            position += 1
        if position >= len(value):
            return links
        target = _LINK_TARGET.match(value, position)
        if target is None:
            return None
        position, params = target.end(), []
        while True:
            param = _LINK_PARAM.match(value, position)
            if param is None:
                break
            params.append((param.group(1), param.group(2)))
            position = param.end()
        separator = _LINK_SEPARATOR.match(value, position)
        if separator is None:
            return None
        position = separator.end()
        links.append((target.group(1), params))


def _unquote_param(raw: str) -> str:
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def rewrite_link_header(value: str, base_url: str, service_url: str, proxy_url: str) -> Optional[str]:
    """A backend's ``Link`` header for the client: each target and ``anchor`` rewritten as
    :func:`rewrite_reference` says; a link-value that must be dropped is left out, and so is the
    whole header (None) when nothing is left or it cannot be parsed (it might name the backend).
    A header in which nothing had to change passes byte for byte, spacing included."""
    links = parse_link_header(value)
    if links is None:
        return None
    kept, changed = [], False
    for target, params in links:
        mapped = rewrite_reference(target, base_url, service_url, proxy_url)
        if mapped is None:
            changed = True
            continue
        changed = changed or mapped != target
        parts = [f"<{mapped}>"]
        for name, raw in params:
            if raw is not None and name.lower() == "anchor":
                anchor = rewrite_reference(_unquote_param(raw), base_url, service_url, proxy_url)
                if anchor is None:
                    changed = True
                    break
                changed = changed or anchor != _unquote_param(raw)
                raw = '"' + anchor.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(name if raw is None else f"{name}={raw}")
        else:
            kept.append("; ".join(parts))
    if not changed:
        return value  # nothing named the backend: the header passes as the backend wrote it
    return ", ".join(kept) or None
