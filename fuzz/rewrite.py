"""Fuzz the rewriting of backend documents, ``ows.rewrite.rewrite_document``.

Input: ``<service byte><charset>\\n<document>``; an empty charset means the backend sent none
(the document's BOM or XML declaration decides then). The rewriter must never raise: a document it
cannot read passes unchanged. Invariants:

- the answer is bytes, and the input itself when nothing was rewritten;
- it never grows beyond a linear bound: each rewritten URL takes at least ``scheme://host`` of
  the input and writes at most the (escaped) proxy URL in its place, in a character set of at most
  four bytes per character; the rest of the URL is written escaped, so a bare ``&`` or quote of a
  malformed document may become ``&amp;`` or ``&quot;`` (at most six bytes for one);
- a changed document reads in its own character set and names the proxy there, or has lost a
  backend URL outside the service's directory (emptied, see :mod:`twitcher.ows.rewrite`).
"""
from __future__ import annotations

from fuzz.common import fields, pick_service
from twitcher.ows.rewrite import _escape, document_encoding, rewrite_document, url_mapper

#: Bytes a character may take in any character set a document arrives in (UTF-32, UTF-8 at most).
MAX_CHAR_BYTES = 4
#: Bytes an escaped character may take (``&quot;``), for bare ``&`` and quotes of malformed XML.
MAX_ESCAPE_GROWTH = 6


def check(data: bytes) -> None:
    service_url, proxy_url, rest = pick_service(data)
    raw_charset, document = fields(rest, 2)
    charset = raw_charset.decode("latin-1").strip() or None
    out = rewrite_document(document, service_url, proxy_url, charset)
    assert isinstance(out, bytes), type(out)
    if out == document:
        return
    public = _escape(url_mapper(service_url, proxy_url).proxy_url, '"')
    encoding = document_encoding(document, charset)
    text = document.decode(encoding)
    bound = len(document) * MAX_ESCAPE_GROWTH + text.count("://") * len(public) * MAX_CHAR_BYTES
    assert len(out) <= bound, f"{len(document)} bytes grew to {len(out)}, bound {bound}"
    rewritten = out.decode(encoding)
    # Changed means a URL was led through the proxy, or one on the backend's origin outside the
    # service's directory was emptied (one "://" fewer).
    assert public in rewritten or rewritten.count("://") < text.count("://"), \
        "changed, but neither the proxy URL is in it nor a backend URL was emptied"


if __name__ == "__main__":
    from fuzz.common import run

    run(check)
