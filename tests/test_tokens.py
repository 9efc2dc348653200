"""Unit tests of twitcher.tokens: making, checking, validating and stripping tokens."""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twitcher import tokens
from twitcher.exceptions import AccessDenied, InvalidArgument
from twitcher.tokens import (
    AccessToken,
    check_token,
    new_token,
    strip_token_params,
    token_params,
    validate_environ,
    validate_hours,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=timezone.utc)


def test_new_token_has_at_least_128_random_bits_and_is_url_safe():
    token, record = new_token(1)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) >= 16
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert record.digest == hashlib.sha256(token.encode()).hexdigest() != token


def test_new_token_never_starts_with_a_dash_so_a_command_line_takes_it_as_an_argument():
    # Without the redraw, one token in 64 starts with "-": all 3000 would miss it with chance 1e-20.
    assert [token for token, _ in (new_token(1) for _ in range(3000)) if token.startswith("-")] == []


def test_new_tokens_differ():
    assert len({new_token(1)[0] for _ in range(50)}) == 50


def test_expiry_is_whole_seconds_after_now():
    _, record = new_token(1.5, {"A": "b"}, now=NOW)
    assert record.expires_at == NOW.replace(microsecond=0) + timedelta(hours=1.5)
    assert record.environ == {"A": "b"} and not record.revoked


def test_fingerprint_is_short_and_not_the_token():
    token, _ = new_token(1)
    assert len(tokens.fingerprint(token)) == 8 and tokens.fingerprint(token) not in token


@pytest.mark.parametrize(("record", "reason"), [
    (None, "unknown"),
    (AccessToken("d", NOW + timedelta(hours=1), revoked=True), "revoked"),
    (AccessToken("d", NOW), "expired"),
    (AccessToken("d", NOW - timedelta(seconds=1)), "expired"),
])
def test_unusable_token_is_rejected_saying_why(record, reason):
    with pytest.raises(AccessDenied) as caught:
        check_token(record, now=NOW)
    assert reason in caught.value.text and caught.value.locator == "access_token"


def test_valid_token_passes_until_its_last_second():
    record = AccessToken("d", NOW + timedelta(seconds=1))
    assert check_token(record, now=NOW) is record


@pytest.mark.parametrize(("given_hours", "expected"),
                         [(1, 1.0), (0.25, 0.25), ("2", 2.0), (" 3.5 ", 3.5), (720, 720.0)])
def test_valid_hours(given_hours, expected):
    assert validate_hours(given_hours, 720) == expected


@pytest.mark.parametrize(("bad", "words"), [
    (0, "greater than 0"), (-1, "greater than 0"), (float("nan"), "greater than 0"), ("nan", "greater than 0"),
    (721, "at most 720"), (float("inf"), "at most 720"), (10**30, "at most 720"),
    ("soon", "must be a number"), (True, "must be a number"), (None, "must be a number"), ([1], "must be a number"),
])
def test_bad_hours_are_refused(bad, words):
    with pytest.raises(InvalidArgument) as caught:
        validate_hours(bad, 720)
    assert words in str(caught.value)


def test_environ_none_is_empty_and_good_environ_passes():
    assert validate_environ(None) == {}
    data = {"USER_ID": "alice", "esgf_access_token": "abc", "X1": ""}
    assert validate_environ(data) == data


@pytest.mark.parametrize("key", [
    "PATH_INFO", "path_info", "HTTP_HOST", "Http_Authorization", "REMOTE_USER", "SERVER_NAME", "wsgi_x",
    "WSGI_INPUT", "PYRAMID_X", "TWITCHER_ADMIN", "CONTENT_LENGTH", "HTTPS", "REQUEST_METHOD", "SCRIPT_NAME",
])
def test_environ_keys_of_the_server_are_reserved(key):
    with pytest.raises(InvalidArgument, match="reserved"):
        validate_environ({key: "x"})


@pytest.mark.parametrize("key", ["wsgi.input", "webob.adhoc_attrs", "1ABC", "_X", "A-B", "A B", "", "K" * 65, "É"])
def test_environ_keys_must_be_plain_identifiers(key):
    with pytest.raises(InvalidArgument, match="not allowed"):
        validate_environ({key: "x"})


@pytest.mark.parametrize(("environ", "words"), [
    ("A=b", "must be a struct"),
    (["A", "b"], "must be a struct"),
    ({f"K{i}": "v" for i in range(33)}, "at most 32"),
    ({"A": "x" * 4097}, "longer than 4096"),
    ({"A": 1}, "must be a string"),
    ({"A": {"nested": "x"}}, "must be a string"),
])
def test_environ_shape_is_bounded(environ, words):
    with pytest.raises(InvalidArgument, match=words):
        validate_environ(environ)


def test_environ_at_the_bounds_passes():
    data = {f"K{i}": "x" * 4096 for i in range(32)}
    assert validate_environ(data) == data


@pytest.mark.parametrize(("query", "expected"), [
    ("service=WPS&access_token=abc&request=Execute", "service=WPS&request=Execute"),
    ("token=abc", ""),
    ("ACCESS_TOKEN=abc&x=1", "x=1"),
    ("DataInputs=a=1;b=2&token=t&version=1.0.0", "DataInputs=a=1;b=2&version=1.0.0"),
    ("acc%65ss_token=abc&service=WPS", "service=WPS"),
    ("%74oken=abc&service=WPS", "service=WPS"),
    ("tokenizer=1&my_token=2", "tokenizer=1&my_token=2"),
    ("service=WPS&request=GetCapabilities", "service=WPS&request=GetCapabilities"),
    ("x=%2Fa%20b&access_token=t", "x=%2Fa%20b"),
])
def test_strip_token_params_keeps_every_other_byte(query, expected):
    assert strip_token_params(query) == expected


def test_token_params_finds_every_spelling():
    assert token_params("access_token=a&TOKEN=b&x=1&acc%65ss_token=c%2B") == ["a", "b", "c+"]


@given(st.lists(st.tuples(st.sampled_from(["service", "request", "DataInputs", "x", "token", "access_token"]),
                          st.text(alphabet="abc=;%2F+", max_size=8)), max_size=6))
def test_stripped_query_never_carries_a_token(pairs):
    query = "&".join(f"{k}={v}" for k, v in pairs)
    stripped = strip_token_params(query)
    assert token_params(stripped) == []
    kept = [f"{k}={v}" for k, v in pairs if k not in ("token", "access_token")]
    assert stripped == "&".join(kept)
