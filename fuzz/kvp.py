"""Fuzz the key-value-pair parser: ``ows.request.decisive_values``, ``parse_kvp`` and their checks.

Input: a raw query string (bytes read as latin-1, as a WSGI server hands it over). Invariants:

- the decisive values are those a standard parser (``urllib.parse.parse_qsl``) would read: a key
  it sees twice must have been refused, and every key it sees once has the value we judged;
- what ``parse_kvp`` returns is made of exactly those values, and only well-formed names pass;
- ``check_query_agrees`` accepts a query against the request parsed from it.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from twitcher.exceptions import InvalidParameterValue, OWSException
from twitcher.ows.request import (
    _REQUEST_NAME,
    _VERSION,
    DECISIVE_KEYS,
    check_query_agrees,
    decisive_values,
    parse_kvp,
)
from twitcher.services import SERVICE_TYPES


def _standard_reading(query: str) -> dict:
    """The decisive keys as parse_qsl reads them: key -> list of values."""
    seen: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        for form in (key.lower(), key.casefold()):
            if form in DECISIVE_KEYS:
                seen.setdefault(form, []).append(value)
                break
    return seen


def check(data: bytes) -> None:
    query = data.decode("latin-1")
    standard = _standard_reading(query)
    try:
        values = decisive_values(query)
    except InvalidParameterValue:
        return  # refused: nothing is judged, nothing is forwarded
    assert set(values) <= set(DECISIVE_KEYS), values
    for key, found in standard.items():
        assert len(found) == 1, f"{key!r} given {len(found)} times but not refused"
        assert values.get(key) == found[0], f"{key!r} judged as {values.get(key)!r}, a backend reads {found[0]!r}"
    try:
        ows = parse_kvp(query)
    except OWSException:
        return
    assert ows.service == values["service"].lower() and ows.service in SERVICE_TYPES, ows
    assert ows.request == values["request"] and _REQUEST_NAME.fullmatch(ows.request), ows
    assert ows.version == values.get("version"), ows
    assert ows.version is None or _VERSION.fullmatch(ows.version), ows
    check_query_agrees(ows, query)


if __name__ == "__main__":
    from fuzz.common import run

    run(check)
