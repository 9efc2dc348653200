"""Registered OWS services: the record, and the rules a registration must follow."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

from .exceptions import InvalidArgument

#: The OWS types, named by the ``service`` parameter of their requests.
OWS_TYPES = ("wps", "wms", "wfs", "wcs")
#: What a service may be registered as: an OWS type, or ``ogcapi`` (see twitcher/ogcapi/).
SERVICE_TYPES = (*OWS_TYPES, "ogcapi")
AUTH_METHODS = ("token", "cert")
MAX_URL_LENGTH = 2048
_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
_DATA_KEYS = frozenset({"name", "type", "public", "auth", "purl", "verify"})
#: Keys that Twitcher 0.3/0.4 portals may still send and that mean nothing any more: ignored.
_LEGACY_KEYS = frozenset({"c4i"})
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Service:
    """A protected OWS service. ``verify`` is True, False or the path of a CA bundle."""

    name: str
    url: str
    type: str = "wps"
    public: bool = False
    auth: str = "token"
    purl: str = ""
    verify: Union[bool, str] = True

    def as_struct(self) -> dict:
        """The XML-RPC/JSON shape of DESIGN.md §5."""
        return asdict(self)


def check_url(url: Any, what: str = "url") -> str:
    """An ``http``/``https`` URL with a host; its query string is kept as it is."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"{what} must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidArgument(f"{what} must not contain spaces or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not a valid URL ({exc}): {url!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidArgument(f"{what} must use http or https, got {url!r}")
    if not parts.hostname:
        raise InvalidArgument(f"{what} must name a host, got {url!r}")
    if parts.username or parts.password:
        raise InvalidArgument(f"{what} must not carry credentials")
    if parts.fragment:
        raise InvalidArgument(f"{what} must not carry a #fragment")
    return url


def name_from_url(url: str) -> str:
    """Derive a service name from a URL: its last meaningful path segment, else its host (and port).

    The port is part of a host-derived name so that two services on one host do not silently
    replace each other (``overwrite`` defaults to true).
    """
    parts = urlsplit(url)
    candidates = [s for s in parts.path.split("/") if s and s.lower() not in ("wps", "ows", "wms", "wfs", "wcs")]
    if candidates:
        base = candidates[-1]
    else:
        base = parts.hostname or "service"
        if parts.port:
            base = f"{base}_{parts.port}"
    name = re.sub(r"[^a-z0-9_-]+", "_", base.lower()).strip("_-")[:64]
    return name or "service"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"service name {name!r} is not allowed: use 1 to 64 lower-case letters, digits, _ or -")
    return name


def _as_bool(value: Any) -> Optional[bool]:
    """A boolean as old portals send it (bool, 0/1, "true"/"false"/"yes"/...), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _check_bool(value: Any, key: str) -> bool:
    flag = _as_bool(value)
    if flag is None:
        raise InvalidArgument(f"{key} must be true or false, got {value!r}")
    return flag


def _check_verify(value: Any) -> Union[bool, str]:
    flag = _as_bool(value)
    if flag is not None:
        return flag
    if isinstance(value, str) and os.path.isabs(value):
        return value
    raise InvalidArgument(f"verify must be true, false or the absolute path of a CA bundle, got {value!r}")


def service_from_registration(url: Any, data: Optional[Mapping[str, Any]] = None) -> Service:
    """Validate the arguments of ``register_service`` and build the :class:`Service`."""
    url = check_url(url)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"data must be a struct, got {type(data).__name__}")
    # Old portals send nil for "not set" and may send keys of the 0.3/0.4 era: both mean default.
    data = {k: v for k, v in data.items() if v is not None and k not in _LEGACY_KEYS}
    unknown = sorted(set(data) - _DATA_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown key {unknown[0]!r} in data: allowed are {', '.join(sorted(_DATA_KEYS))}")
    name = check_name(data["name"]) if data.get("name") else name_from_url(url)
    service_type = str(data.get("type") or "wps").lower()
    if service_type not in SERVICE_TYPES:
        raise InvalidArgument(f"type must be one of {', '.join(SERVICE_TYPES)}, got {data.get('type')!r}")
    auth = str(data.get("auth") or "token").lower()
    if auth not in AUTH_METHODS:
        raise InvalidArgument(f"auth must be one of {', '.join(AUTH_METHODS)}, got {data.get('auth')!r}")
    purl = check_url(data["purl"], "purl") if data.get("purl") else ""
    return Service(
        name=name,
        url=url,
        type=service_type,
        public=_check_bool(data.get("public", False), "public"),
        auth=auth,
        purl=purl,
        verify=_check_verify(data.get("verify", True)),
    )


def service_from_record(record: Mapping[str, Any]) -> Service:
    """Rebuild a :class:`Service` from what a store kept (already validated on the way in)."""
    return Service(**{k: record[k] for k in ("name", "url", "type", "public", "auth", "purl", "verify") if k in record})
