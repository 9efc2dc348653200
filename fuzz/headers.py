"""Fuzz the filtering and rewriting of response headers, ``proxy.view.forward_response_headers``.

Input: ``<service byte>`` then one header per line, ``Name: value``. Invariants:

- no hop-by-hop header, no ``Content-Length`` and no header that ``Connection`` names goes out;
- every other header that goes out went in, in the same order, its value unchanged, except the
  headers that carry links (``Location``, ``Content-Location``, ``Link``);
- a link header that was changed now names the proxy, and none that goes out still points into
  the service's directory on the backend (``map_url`` would map it); link headers that name the
  backend elsewhere, or do not parse, may be dropped; a Link header that goes out parses, and
  none of its targets points into the service's directory on the backend.
"""
from __future__ import annotations

from fuzz.common import pick_service
from twitcher.ows.rewrite import map_url, parse_link_header, url_mapper
from twitcher.proxy.view import _HOP_BY_HOP, forward_response_headers

_LINKS = ("location", "content-location", "link")


def parse_headers(data: bytes) -> list:
    """``Name: value`` lines as a header list; lines without a colon are skipped."""
    headers = []
    for line in data.decode("latin-1").split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return headers


def check(data: bytes) -> None:
    service_url, proxy_url, rest = pick_service(data)
    headers = parse_headers(rest)
    out = forward_response_headers(headers, service_url, proxy_url)
    named = {token.strip().lower() for key, value in headers if key.lower() == "connection"
             for token in value.split(",") if token.strip()}
    dropped = _HOP_BY_HOP | {"content-length"} | named
    public = url_mapper(service_url, proxy_url).proxy_url
    position = 0
    for key, value in out:
        assert key.lower() not in dropped, (key, headers)
        # A subsequence of the input, in order: look for it in what is left of the input. A link
        # header may have been dropped before it (it named the backend, or did not parse), so
        # an unchanged one is matched by value, a rewritten one by name alone.
        candidates = [i for i in range(position, len(headers)) if headers[i][0] == key]
        assert candidates, f"{key!r} went out, but not in this order or not at all"
        same = [i for i in candidates if headers[i][1] == value]
        index = same[0] if same and key.lower() in _LINKS else candidates[0]
        original, position = headers[index][1], index + 1
        if key.lower() not in _LINKS:
            assert value == original, (key, value, original)
            continue
        assert value == original or public in value, (key, value, original)
        if key.lower() != "link":
            assert map_url(value, service_url, proxy_url) is None, f"{key} still names the backend: {value!r}"
            continue
        links = parse_link_header(value)
        assert links is not None, f"a Link header that does not parse went out: {value!r}"
        for target, _ in links:
            assert map_url(target, service_url, proxy_url) is None, f"a Link still names the backend: {value!r}"


if __name__ == "__main__":
    from fuzz.common import run

    run(check)
