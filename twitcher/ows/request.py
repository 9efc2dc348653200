"""Strict parsing of OWS requests (key-value query strings and XML bodies) for access decisions.

Pure functions, no Pyramid: the tween asks them *what* a request is before it decides whether a
token is needed. They are strict on purpose, because what was checked here must be exactly what
the backend runs: a decisive key given twice, a value that is not a plain name, or an XML body
with a DOCTYPE is an error, never a guess.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Dict, Optional
from urllib.parse import unquote_plus

from lxml import etree

from ..exceptions import (
    InvalidParameterValue,
    MalformedRequest,
    MissingParameterValue,
    OperationNotSupported,
)
from ..services import OWS_TYPES

#: The keys whose values decide access; each may be given at most once.
DECISIVE_KEYS = ("service", "request", "version")

#: WPS 1.0.0 (the first three) and WPS 2.0.0 operations, lower case. Other OWS types are judged
#: only by whether a request is public; their backends know their own (vendor) operations.
WPS_REQUESTS = frozenset({"getcapabilities", "describeprocess", "execute", "getstatus", "getresult", "dismiss"})

# ASCII only: a look-alike letter must not pass as a public request name.
_REQUEST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}", re.ASCII)
_VERSION = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}", re.ASCII)
# Whitespace and NUL are dropped from keys before comparing, so that "request%20" or
# "request%00" count as "request" (and so as a duplicate): over-matching only makes us stricter.
_KEY_NOISE = re.compile(r"[\s\x00]+")


@dataclass(frozen=True)
class OWSRequest:
    """What a request says about itself: service type (lower case), request name (as sent), version."""

    service: Optional[str]
    request: Optional[str]
    version: Optional[str] = None


def _unquote_plus(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    return unquote_plus(text)


def decisive_key(raw_key: str) -> Optional[str]:
    """The decisive key that ``raw_key`` (still percent-encoded) means to any backend, or None.

    Keys are compared case-insensitively in every way a backend might fold case (``lower``,
    ``casefold``, ``upper``), so that e.g. a dotless ``ı`` or a long ``ſ`` cannot hide a key.
    """
    if raw_key.isascii() and raw_key.isprintable() and not any(c in raw_key for c in " %+"):
        # The common case (plain ASCII, nothing encoded): every case folding agrees with lower().
        lowered = raw_key.lower()
        return lowered if lowered in DECISIVE_KEYS else None
    name = _KEY_NOISE.sub("", _unquote_plus(raw_key))
    if not name or len(name) > 16:
        return None
    for form in (name.lower(), name.casefold(), name.upper().lower()):
        if form in DECISIVE_KEYS:
            return form
    return None


def decisive_values(query_string: str) -> Dict[str, str]:
    """The decisive keys of a raw query string with their decoded values.

    Raises :class:`InvalidParameterValue` when one of them is given more than once, in any
    letter case or encoding: a backend might read the other one.
    """
    values: Dict[str, str] = {}
    if not query_string:
        return values
    hidden = set()
    for pair in query_string.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        if ";" in pair:
            # Old CGI libraries also split on ";": a decisive key hidden there counts as given
            # (but its value is never judged, so WPS "DataInputs=a=1;b=2" keeps working).
            for piece in pair.split(";")[1:]:
                hidden_key = decisive_key(piece.partition("=")[0])
                if hidden_key is not None:
                    _count(hidden_key, hidden, values)
                    hidden.add(hidden_key)
        key = decisive_key(raw_key)
        if key is None:
            continue
        _count(key, hidden, values)
        values[key] = _unquote_plus(raw_value)
    return values


def _count(key: str, hidden: set, values: Dict[str, str]) -> None:
    if key in values or key in hidden:
        raise InvalidParameterValue(f"The parameter {key!r} is given more than once.", locator=key)


def _checked(service: Optional[str], request: Optional[str], version: Optional[str]) -> OWSRequest:
    """Check the three decisive values of a request at the root of a service."""
    if not service:
        raise MissingParameterValue("The parameter 'service' is missing or empty.", locator="service")
    if service.lower() not in OWS_TYPES:
        raise InvalidParameterValue(
            f"Unknown service type; expected one of {', '.join(t.upper() for t in OWS_TYPES)}.",
            locator="service")
    if not request:
        raise MissingParameterValue("The parameter 'request' is missing or empty.", locator="request")
    if not _REQUEST_NAME.fullmatch(request):
        raise InvalidParameterValue("The request name is not a valid OWS operation name.", locator="request")
    if version is not None and not _VERSION.fullmatch(version):
        if not version:
            raise MissingParameterValue("The parameter 'version' is empty.", locator="version")
        raise InvalidParameterValue("The version is not of the form x.y.z.", locator="version")
    return OWSRequest(service=service.lower(), request=request, version=version)


def parse_kvp(query_string: str) -> OWSRequest:
    """Parse a GET request at the root of a service from its raw query string."""
    values = decisive_values(query_string)
    return _checked(values.get("service"), values.get("request"), values.get("version"))


def _new_parser() -> etree.XMLParser:
    # Untrusted input: no entities, no DTD, no network, no unbounded trees.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False)


_parsers = threading.local()


def xml_parser() -> etree.XMLParser:
    """This thread's hardened parser: lxml parsers are not thread-safe, but are cheap to reuse."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = _new_parser()
    return parser


def parse_xml(body: bytes) -> OWSRequest:
    """Parse a POST request from its XML body (already read and bounded by the caller).

    The request type is the root element's local name; ``service`` and ``version`` are its
    attributes. A DOCTYPE is refused outright: no OWS request needs one, and the backend's
    parser may be less careful than ours.
    """
    if not body or not body.strip():
        raise MalformedRequest("The request body is empty; an OWS XML request was expected.")
    if b"<!DOCTYPE" in body:
        raise MalformedRequest("The request body carries a DOCTYPE, which is not allowed.")
    try:
        root = etree.fromstring(body, xml_parser())
    except etree.XMLSyntaxError:
        raise MalformedRequest("The request body is not well-formed XML.") from None
    docinfo = root.getroottree().docinfo
    # The byte check above misses other encodings (UTF-16, ...); the parsed document does not.
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise MalformedRequest("The request body carries a DOCTYPE, which is not allowed.")
    if not isinstance(root.tag, str):
        raise MalformedRequest("The request body has no root element.")
    return _checked(root.get("service"), etree.QName(root).localname, root.get("version"))


def request_for_service(ows: OWSRequest, service_type: str) -> str:
    """The lower-case request name to judge, once ``ows`` is checked against the registered type.

    The registered type is what counts: a request that names another service type is refused
    rather than judged by the rules of the wrong type.
    """
    if ows.service != service_type:
        raise InvalidParameterValue(
            f"This endpoint is a {service_type.upper()} service; the request names another service type.",
            locator="service")
    name = (ows.request or "").lower()
    if service_type == "wps" and name not in WPS_REQUESTS:
        raise OperationNotSupported("This request is not a WPS 1.0.0 or 2.0.0 operation.", locator=ows.request)
    return name


def check_query_agrees(ows: OWSRequest, query_string: str) -> None:
    """For a POST: decisive keys in the query string must agree with the body, or be absent.

    A backend that merges both could otherwise run the one that was not checked.
    """
    values = decisive_values(query_string)
    given = {"service": ows.service, "request": ows.request, "version": ows.version}
    for key, value in values.items():
        if given[key] is None or value.lower() != given[key].lower():
            raise InvalidParameterValue(f"The query parameter {key!r} disagrees with the XML body.", locator=key)
