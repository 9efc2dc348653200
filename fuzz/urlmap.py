"""Fuzz the URL mapper both ways: ``proxy.view.target_url`` (proxy -> backend, with the extra path)
and ``ows.rewrite.map_url`` (backend -> proxy, what rewritten documents link to).

Input: ``<service byte><extra path>\\n<client query>\\n<a URL found in a backend answer>``; an
extra path of a single ``\\x00`` stands for "none" (``/ows/proxy/{name}`` without a slash).
Invariants:

- a target URL never leaves the registered origin, nor the service's base directory: no segment
  of its path means ``.`` or ``..`` after any number of percent-decodings, no backslash, no
  fragment, and no token parameter rides along in its query;
- a URL that ``map_url`` maps is on the backend's origin, and its proxy form starts with the proxy
  URL; resolving that proxy form back (the path after the proxy URL as the extra path) gives a
  target on the same origin again, the same invariants holding.
"""
from __future__ import annotations

from typing import Optional
from urllib.parse import unquote, urlsplit

from fuzz.common import fields, pick_service
from twitcher.exceptions import OWSException
from twitcher.ows.rewrite import _origin, base_directory, map_url, url_mapper
from twitcher.proxy.view import target_url
from twitcher.tokens import TOKEN_PARAMS, _param_name


def _check_target(url: str, service_url: str, extra_path: Optional[str]) -> None:
    service, target = urlsplit(service_url), urlsplit(url)
    assert (target.scheme, target.netloc) == (service.scheme, service.netloc), (url, service_url)
    assert not target.fragment and "#" not in url, url
    if extra_path is None:
        assert target.path == service.path, (url, service_url)
    else:
        directory = base_directory(service.path or "/")
        assert target.path.startswith(directory), (url, directory)
        for segment in target.path[len(directory):].split("/"):
            for _ in range(8):
                segment, previous = unquote(segment), segment
                assert segment not in (".", "..") and "\\" not in segment, (url, extra_path)
                if segment == previous:
                    break
    registered = set(service.query.split("&")) if service.query else set()
    for pair in target.query.split("&"):
        assert pair in registered or _param_name(pair) not in TOKEN_PARAMS, (url, pair)


def check(data: bytes) -> None:
    service_url, proxy_url, rest = pick_service(data)
    raw_extra, raw_query, raw_found = fields(rest, 3)
    extra_path = None if raw_extra == b"\x00" else raw_extra.decode("utf-8", "replace")
    query = raw_query.decode("latin-1")
    try:
        _check_target(target_url(service_url, query, extra_path), service_url, extra_path)
    except OWSException:
        pass

    found = raw_found.decode("utf-8", "replace")
    mapped = map_url(found, service_url, proxy_url)
    if mapped is None:
        return
    assert _origin(urlsplit(found)) == _origin(urlsplit(service_url)), (found, service_url)
    public = url_mapper(service_url, proxy_url).proxy_url  # as written into documents: percent-encoded
    assert mapped == public or mapped.startswith((public + "/", public + "?", public + "#")), mapped
    tail = mapped[len(public):].partition("#")[0]
    path, _, back_query = tail.partition("?")
    back_extra = unquote(path[1:]) if path.startswith("/") else None
    try:
        _check_target(target_url(service_url, back_query, back_extra), service_url, back_extra)
    except OWSException:
        pass


if __name__ == "__main__":
    from fuzz.common import run

    run(check)
