"""Fuzz the XML request parser, ``ows.request.parse_xml``, with whole POST bodies.

Invariants: a body with a DOCTYPE never passes (in any encoding); what passes names a known
service type and a well-formed request; the request is the local name of the root element as a
plain lxml parse (the hardened parser, fresh) sees it, and ``service``/``version`` its attributes.
"""
from __future__ import annotations

from lxml import etree

from twitcher.exceptions import OWSException
from twitcher.ows.request import _REQUEST_NAME, _new_parser, parse_xml
from twitcher.services import SERVICE_TYPES


def check(data: bytes) -> None:
    try:
        ows = parse_xml(data)
    except OWSException:
        return
    assert ows.service in SERVICE_TYPES and _REQUEST_NAME.fullmatch(ows.request or ""), ows
    root = etree.fromstring(data, _new_parser())
    docinfo = root.getroottree().docinfo
    assert not docinfo.doctype and docinfo.internalDTD is None, "a DOCTYPE passed"
    assert etree.QName(root).localname == ows.request, (etree.QName(root).localname, ows)
    assert (root.get("service") or "").lower() == ows.service, ows
    assert root.get("version") == ows.version, ows


if __name__ == "__main__":
    from fuzz.common import run

    run(check)
