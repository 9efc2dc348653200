"""Twitcher's settings, parsed once at start-up into a frozen, typed object.

Nothing else in Twitcher reads raw setting strings: it asks ``request.registry.twitcher``
(or ``config.registry.twitcher``) for a :class:`TwitcherSettings`. Every key ``twitcher.x``
may be overridden by an environment variable ``TWITCHER_X`` so that containers and
process managers can configure Twitcher without editing the ini file.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from typing import Callable, FrozenSet, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .exceptions import ConfigurationError
from .federation.issuers import TrustedIssuer
from .federation.issuers import parse_site_id as _site_id
from .federation.issuers import parse_trusted_issuers as _trusted_issuers
from .ogcapi.routes import Rule, parse_rules

#: The requests that need no token unless ``twitcher.public_requests`` says otherwise.
DEFAULT_PUBLIC_REQUESTS = (
    "wps:getcapabilities wps:describeprocess "
    "wms:getcapabilities wfs:getcapabilities wcs:getcapabilities"
)


@dataclass(frozen=True)
class TwitcherSettings:
    """Every ``twitcher.*`` setting, typed. Field order is the order of the docs and ini files."""

    url: str = "http://localhost:8000"
    db_url: str = "sqlite://"
    ows_security: bool = True
    ows_proxy: bool = True
    rpcinterface: bool = True
    wps: bool = False
    wps_processes: Tuple[str, ...] = ()
    wps_cfg: Optional[str] = None
    wps_workdir: Optional[str] = None
    protected_path: str = "/ows"
    public_requests: FrozenSet[Tuple[str, str]] = frozenset()
    ogcapi_public: Tuple[Rule, ...] = ()
    job_retention_hours: float = 720.0
    cors_allow_origins: Tuple[str, ...] = ()
    username: str = "admin"
    password: Optional[str] = None
    token_max_hours: float = 720.0
    signing_key: Optional[str] = None
    site_id: Optional[str] = None
    trusted_issuers: Tuple[TrustedIssuer, ...] = ()
    revocation_poll_seconds: float = 60.0
    revocation_max_age_seconds: float = 600.0
    proxy_timeout: Tuple[float, float] = (5.0, 300.0)
    max_request_body: int = 10 * 1024 * 1024
    rewrite_max_bytes: int = 8 * 1024 * 1024
    rewrite_timeout: float = 60.0
    max_inflight_per_service: int = 4
    trust_forwarded_cert_header: bool = False
    metrics: bool = False
    metrics_allow: Tuple[str, ...] = ("127.0.0.1", "::1")
    access_log: bool = False
    data_plane: str = "python"
    front_secret: Optional[str] = None
    front_addresses: Tuple[str, ...] = ()

    @property
    def public_base_url(self) -> str:
        """``twitcher.url`` without a trailing slash, for building public links."""
        return self.url.rstrip("/")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _positive_number(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value.strip().replace("_", ""))
    if number <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with a host, got {value!r}")
    return value.strip()


def _db_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("sqlite://", "mongodb://", "mongodb+srv://")):
        raise ValueError(f"expected a sqlite:// or mongodb:// URL, got {value!r}")
    return value


def _path_prefix(value: str) -> str:
    segments = [s for s in value.strip().split("/") if s]
    if not segments:
        raise ValueError("the protected path cannot be the site root")
    return "/" + "/".join(segments)


def _words(value: str) -> Tuple[str, ...]:
    return tuple(value.replace(",", " ").split())


def _public_requests(value: str) -> FrozenSet[Tuple[str, str]]:
    pairs = set()
    for word in _words(value):
        service, sep, request = word.partition(":")
        if not sep or not service or not request:
            raise ValueError(f"expected service:request pairs such as wps:getcapabilities, got {word!r}")
        pairs.add((service.lower(), request.lower()))
    return frozenset(pairs)


def _origins(value: str) -> Tuple[str, ...]:
    """``*`` alone, or origins (``scheme://host[:port]``, no path); empty means CORS off."""
    words = _words(value)
    if "*" in words:
        if len(words) > 1:
            raise ValueError("* allows every origin: give it alone or list origins")
        return ("*",)
    origins = []
    for word in words:
        parts = urlsplit(word)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username:
            raise ValueError(f"expected origins such as https://portal.example.org, got {word!r}")
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def _timeouts(value: str) -> Tuple[float, float]:
    """One number for both timeouts, or ``connect, read``."""
    numbers = [_positive_number(v) for v in _words(value)]
    if len(numbers) == 1:
        return (numbers[0], numbers[0])
    if len(numbers) == 2:
        return (numbers[0], numbers[1])
    raise ValueError(f"expected one number or two (connect, read), got {value!r}")


def _networks(value: str) -> Tuple[str, ...]:
    """Addresses or networks (``10.0.0.0/24``), each checked; may be empty (nobody)."""
    words = _words(value)
    for word in words:
        ipaddress.ip_network(word, strict=False)  # ValueError names the bad word
    return words


def _data_plane(value: str) -> str:
    """``python`` (Twitcher carries every byte) or ``nginx`` (see :mod:`twitcher.dataplane`)."""
    word = value.strip().lower()
    if word not in ("python", "nginx"):
        raise ValueError(f"expected python or nginx, got {value!r}")
    return word


def _front_secret(value: str) -> Optional[str]:
    """The shared secret of the front nginx: empty (none) or at least 16 characters a header can carry."""
    secret = value.strip()
    if secret and (len(secret) < 16 or not secret.isascii() or not secret.isprintable() or " " in secret):
        raise ValueError("expected at least 16 printable ASCII characters without spaces")
    return secret or None


def _optional(text: str) -> Optional[str]:
    return text.strip() or None


_PARSERS: Mapping[str, Callable[[str], object]] = {
    "url": _http_url,
    "db_url": _db_url,
    "ows_security": _bool,
    "ows_proxy": _bool,
    "rpcinterface": _bool,
    "wps": _bool,
    "wps_processes": _words,
    "wps_cfg": _optional,
    "wps_workdir": _optional,
    "protected_path": _path_prefix,
    "public_requests": _public_requests,
    "ogcapi_public": parse_rules,
    "job_retention_hours": _positive_number,
    "cors_allow_origins": _origins,
    "username": str.strip,
    "password": _optional,
    "token_max_hours": _positive_number,
    "signing_key": _optional,
    "site_id": _site_id,
    "trusted_issuers": _trusted_issuers,
    "revocation_poll_seconds": _positive_number,
    "revocation_max_age_seconds": _positive_number,
    "proxy_timeout": _timeouts,
    "max_request_body": _positive_int,
    "rewrite_max_bytes": _positive_int,
    "rewrite_timeout": _positive_number,
    "max_inflight_per_service": _positive_int,
    "trust_forwarded_cert_header": _bool,
    "metrics": _bool,
    "metrics_allow": _networks,
    "access_log": _bool,
    "data_plane": _data_plane,
    "front_secret": _front_secret,
    "front_addresses": _networks,
}


def env_var_name(field: str) -> str:
    """The environment variable that overrides ``twitcher.<field>``."""
    return "TWITCHER_" + field.upper()


def parse_settings(raw: Mapping[str, str], environ: Optional[Mapping[str, str]] = None) -> TwitcherSettings:
    """Build :class:`TwitcherSettings` from ini values overridden by ``TWITCHER_*`` variables.

    Raises :class:`ConfigurationError` naming the key of the first bad value, so that a
    misconfigured instance stops at start-up instead of misbehaving under traffic.
    """
    environ = os.environ if environ is None else environ
    known = {f.name for f in dataclasses.fields(TwitcherSettings)}
    unknown = sorted(k for k in raw if k.startswith("twitcher.") and k[len("twitcher."):] not in known)
    if unknown:
        raise ConfigurationError(f"unknown setting {unknown[0]}: see docs/configuration.rst")

    values = {"public_requests": _public_requests(DEFAULT_PUBLIC_REQUESTS)}
    for field in dataclasses.fields(TwitcherSettings):
        key = "twitcher." + field.name
        text = environ.get(env_var_name(field.name), raw.get(key))
        if text is None:
            continue
        try:
            values[field.name] = _PARSERS[field.name](str(text))
        except ValueError as exc:
            raise ConfigurationError(f"invalid value for {key}: {exc}") from None

    settings = TwitcherSettings(**values)
    if settings.data_plane == "nginx" and not (settings.front_secret or settings.front_addresses):
        raise ConfigurationError(
            "twitcher.data_plane = nginx needs twitcher.front_secret or twitcher.front_addresses: "
            "without them anyone could ask the verify endpoint, or get the hand-off meant for nginx"
        )
    if settings.rpcinterface and not settings.password:
        raise ConfigurationError(
            "twitcher.password is not set: the admin API (twitcher.rpcinterface) refuses to start "
            f"without an admin password; set it or {env_var_name('password')}"
        )
    return settings


def includeme(config) -> None:
    """Parse the settings once and keep them in the registry for every other concern."""
    config.registry.twitcher = parse_settings(config.get_settings())
