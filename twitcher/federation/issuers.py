"""Who may mint signed tokens that this site accepts: the ``twitcher.trusted_issuers`` syntax.

Pure Python on purpose (no Biscuit import): :mod:`twitcher.settings` parses these values at
start-up, before anything else of the federation is loaded.

One line per issuing site::

    SITE_ID = PUBLIC_KEY [PUBLIC_KEY ...] [REVOCATION_LIST_URL]

A public key is ``ed25519/`` followed by 64 hex digits (what ``twitcherctl keygen`` prints) or
the 64 hex digits alone. Several keys on one line are the site's current and older keys (key
rotation); a token names the key that signed it by its *key id*, which is derived from the key
(:func:`key_id`), so no operator ever numbers keys by hand. The URL is the issuer's
``/ows/revoked`` list; every site other than our own needs one.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX_KEY = re.compile(r"^(?:ed25519/)?([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class TrustedIssuer:
    """One issuing site: its id, its public keys (lower-case hex) and where it publishes revocations."""

    site_id: str
    public_keys: Tuple[str, ...]
    revocation_url: Optional[str] = None


def parse_site_id(value: str) -> str:
    """A site id: 1 to 64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit."""
    value = value.strip()
    if not _SITE_ID.match(value):
        raise ValueError(f"expected a site id of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def parse_public_key(value: str) -> str:
    """The 64 lower-case hex digits of an Ed25519 public key given as ``ed25519/HEX`` or ``HEX``."""
    match = _HEX_KEY.match(value.strip())
    if not match:
        raise ValueError(f"expected an Ed25519 public key, ed25519/ and 64 hex digits, got {value!r}")
    return match.group(1).lower()


def key_id(public_key_hex: str) -> int:
    """The key id a token carries for ``public_key_hex``: the first 32 bits of its SHA-256.

    Biscuit's root key id is a 32-bit number; deriving it from the key means that an operator
    only ever copies public keys, and that two sites can never be told apart by a number alone
    (the verifier also checks that the token's issuer is the site that owns the key).
    """
    return int.from_bytes(hashlib.sha256(bytes.fromhex(public_key_hex)).digest()[:4], "big")


def _http_url(word: str) -> Optional[str]:
    parts = urlsplit(word)
    if parts.scheme in ("http", "https") and parts.hostname:
        return word
    return None


def parse_trusted_issuers(value: str) -> Tuple[TrustedIssuer, ...]:
    """Parse the ``twitcher.trusted_issuers`` lines; raise ValueError naming the bad line."""
    issuers: Dict[str, TrustedIssuer] = {}
    seen_keys: Dict[int, str] = {}
    for line in value.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        site, sep, rest = line.partition("=")
        if not sep:
            raise ValueError(f"expected 'SITE_ID = PUBLIC_KEY ... [URL]', got {line!r}")
        site = parse_site_id(site)
        if site in issuers:
            raise ValueError(f"site {site!r} is listed twice; put all its keys on one line")
        keys = []
        url = None
        for word in rest.split():
            if url is None and _http_url(word):
                url = word
                continue
            keys.append(parse_public_key(word))
        if not keys:
            raise ValueError(f"site {site!r} has no public key")
        for key in keys:
            kid = key_id(key)
            if kid in seen_keys:
                raise ValueError(f"the key {key[:16]}... of {site!r} is listed already (for {seen_keys[kid]!r}), "
                                 "or two keys share a key id: generate a new key")
            seen_keys[kid] = site
        issuers[site] = TrustedIssuer(site, tuple(keys), url)
    return tuple(issuers.values())
