"""What a signed token may be restricted to, checked the same way for the admin API and ``twitcherctl``.

A *service* is a registered service name (lower-case letters, digits, ``_``, ``-``) or
``twitcher:wps`` for the internal WPS; service names are shared across the sites of a
federation by convention (a token for ``emu`` works on the service named ``emu`` at every site
that trusts its issuer). An *operation* is an OWS request name, compared in lower case
(``execute``, ``getcapabilities``, ``getmap``, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..exceptions import InvalidArgument

INTERNAL_WPS = "twitcher:wps"
MAX_ITEMS = 32
SUBJECT_MAX_LENGTH = 256
_SERVICE = re.compile(r"^[a-z0-9_-]{1,64}$")
_OPERATION = re.compile(r"^[a-z][a-z0-9]{0,63}$")
_OPTION_KEYS = frozenset({"signed", "services", "operations"})


@dataclass(frozen=True)
class SignedOptions:
    """The restrictions asked for a signed token; empty means no restriction of that kind."""

    services: Tuple[str, ...] = ()
    operations: Tuple[str, ...] = ()


def _names(value: Any, what: str, pattern: re.Pattern, extra: Tuple[str, ...] = ()) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
        raise InvalidArgument(f"{what} must be a list of at most {MAX_ITEMS} names")
    names = []
    for item in value:
        item = item.lower() if isinstance(item, str) and what == "operations" else item
        if not isinstance(item, str) or not (pattern.match(item) or item in extra):
            raise InvalidArgument(f"{what}: {item!r} is not a valid name")
        if item not in names:
            names.append(item)
    return tuple(names)


def services(value: Any) -> Tuple[str, ...]:
    return _names(value, "services", _SERVICE, (INTERNAL_WPS,))


def operations(value: Any) -> Tuple[str, ...]:
    return _names(value, "operations", _OPERATION)


def signed_options(options: Any) -> Optional[SignedOptions]:
    """The ``options`` struct of ``generate_token``: None for an opaque token (the default)."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise InvalidArgument(f"options must be a struct, got {type(options).__name__}")
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown option {unknown[0]!r} (known: {', '.join(sorted(_OPTION_KEYS))})")
    signed = options.get("signed", False)
    if not isinstance(signed, bool):
        raise InvalidArgument(f"options.signed must be a boolean, got {signed!r}")
    if not signed:
        if options.get("services") or options.get("operations"):
            raise InvalidArgument("services and operations restrict signed tokens only: add signed=true")
        return None
    return SignedOptions(services(options.get("services")), operations(options.get("operations")))


def subject(value: Any) -> Optional[str]:
    """Who the token is for (free text such as a user id), or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > SUBJECT_MAX_LENGTH:
        raise InvalidArgument(f"subject must be a string of at most {SUBJECT_MAX_LENGTH} characters")
    return value
