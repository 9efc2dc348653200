"""Is this request from the front nginx? The verify endpoint and the X-Accel hand-off ask.

Both tell things meant for nginx only: the verify answer names the backend URL, and an
``X-Accel-Redirect`` answer that reached a client directly would show it the backend. So they are
given only to requests that prove they came through the configured front: the shared secret in
``X-Twitcher-Front`` (set by the generated nginx configuration, overwriting anything a client
sent) and/or a direct peer address in ``twitcher.front_addresses``. When both are configured both
must hold; when neither is, nothing is from the front (fail closed).
"""
from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache
from typing import Tuple

from ..settings import TwitcherSettings

#: The request header that carries ``twitcher.front_secret``; never forwarded to a backend.
FRONT_HEADER = "X-Twitcher-Front"
_FRONT_ENVIRON = "HTTP_" + FRONT_HEADER.upper().replace("-", "_")


@lru_cache(maxsize=8)
def _networks(words: Tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(word, strict=False) for word in words)


def from_front(environ: dict, settings: TwitcherSettings) -> bool:
    """True when the request in ``environ`` came through the configured front."""
    if not settings.front_secret and not settings.front_addresses:
        return False
    if settings.front_secret:
        sent = environ.get(_FRONT_ENVIRON, "")
        if not hmac.compare_digest(sent.encode("latin-1", "replace"), settings.front_secret.encode("ascii")):
            return False
    if settings.front_addresses:
        try:
            address = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        if not any(address in network for network in _networks(settings.front_addresses)):
            return False
    return True
