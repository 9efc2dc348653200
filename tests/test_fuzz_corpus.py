"""Every fuzz harness over its seed corpus, once (``make test`` keeps the harnesses from rotting),
and the findings of ``make fuzz`` as plain regression tests."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz.run import TARGETS
from twitcher.ows.rewrite import map_url, rewrite_document
from twitcher.proxy.view import forward_response_headers

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
SERVICE, PROXY = "http://backend.example:8080/wps", "https://tw.example/ows/proxy/emu"


@pytest.mark.parametrize("target", TARGETS)
def test_harness_passes_its_seed_corpus(target):
    check = importlib.import_module(f"fuzz.{target}").check
    seeds = sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
    assert len(seeds) >= 5, f"fuzz/corpus/{target} lost its seeds"
    for seed in seeds:
        check(seed.read_bytes())  # raises on a finding, naming it in the traceback


@pytest.mark.parametrize("target", TARGETS)
def test_harness_detects_a_broken_invariant(target, monkeypatch):
    """A harness that accepts anything proves nothing: make the code under test fail, see it caught."""
    harness = importlib.import_module(f"fuzz.{target}")
    victim = {"kvp": "decisive_values", "xmlrequest": "parse_xml", "urlmap": "target_url",
              "rewrite": "rewrite_document", "headers": "forward_response_headers"}[target]

    def broken(*args, **kwargs):
        raise RuntimeError("not an OWS error")

    monkeypatch.setattr(harness, victim, broken)
    with pytest.raises(RuntimeError):
        for seed in sorted((CORPUS / target).iterdir()):
            harness.check(seed.read_bytes())


@pytest.mark.parametrize(("location", "kept"), [
    ("http://[x", False), ("http://[::1", False),  # unparseable: it might name the backend, dropped
    ("https://[::1]:99999999/wps", True),  # another origin than the backend's: passes as sent
])
def test_location_that_is_no_url_is_dropped_or_passed_never_a_500(location, kept):
    """Found by the headers and urlmap harnesses: urlsplit's ValueError was a 500 to the client."""
    assert map_url(location, SERVICE, PROXY) is None
    expected = [("Location", location)] if kept else []
    assert forward_response_headers([("Location", location)], SERVICE, PROXY) == expected


@pytest.mark.parametrize("reference", ["&#99999999999999999999;", "&#x110000;", "&#1114112;"])
def test_character_reference_beyond_unicode_leaves_the_url_alone(reference):
    """Found by the rewrite harness: chr() raised OverflowError/ValueError on the backend's document."""
    document = f'<a href="{SERVICE}?x={reference}"/><b href="{SERVICE}?y=1"/>'.encode()
    assert rewrite_document(document, SERVICE, PROXY) == \
        f'<a href="{SERVICE}?x={reference}"/><b href="{PROXY}?y=1"/>'.encode()


@pytest.mark.parametrize("charset", ["utf-8\x00", "idna", "punycode"])
def test_charset_that_cannot_round_trip_passes_the_document_unchanged(charset):
    """Found by the rewrite harness (NUL in the charset) and by reading it (codecs that decode text
    but raise UnicodeError, or refuse xmlcharrefreplace, when encoding): all were a 500."""
    document = f'<a href="{SERVICE}?x=1">{"x" * 70}</a>'.encode()
    assert rewrite_document(document, SERVICE, PROXY, charset) == document
