"""Access tokens: how they are made, stored, checked and kept out of logs and backends.

A token is an opaque random string handed to one client. Twitcher keeps only its SHA-256
digest, so a leaked database does not leak usable tokens, and logs only a short fingerprint.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, List, Mapping, Optional, Tuple
from urllib.parse import unquote_plus

from .exceptions import AccessDenied, InvalidArgument

#: 32 random bytes: 256 bits, twice the 128 the design asks for.
TOKEN_BYTES = 32
#: Query parameters that carry a token; ``token`` is the name older clients used.
TOKEN_PARAMS = ("access_token", "token")

ENVIRON_MAX_ITEMS = 32
ENVIRON_MAX_KEY = 64
ENVIRON_MAX_VALUE = 4096
#: Environ keys are identifiers without dots (so never ``wsgi.*``, ``webob.*``, ...) and must not
#: collide with WSGI/CGI/server keys, compared upper-cased. Lower case is accepted because
#: 0.3/0.4 portals sent keys such as ``esgf_access_token``.
_ENVIRON_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_KEYS = frozenset({
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
    "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
    "GATEWAY_INTERFACE", "AUTH_TYPE", "PATH_TRANSLATED", "DOCUMENT_ROOT", "HTTPS",
})
_RESERVED_PREFIXES = ("HTTP_", "REMOTE_", "SERVER_", "SSL_", "WSGI", "PASTE", "WEBOB", "PYRAMID",
                      "REQUEST_", "SCRIPT_", "GATEWAY_", "TWITCHER")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def token_digest(token: str) -> str:
    """The hex SHA-256 digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def fingerprint(token: str) -> str:
    """A short, non-reversible label of a token that is safe to write into logs."""
    return token_digest(token)[:8]


@dataclass(frozen=True)
class AccessToken:
    """What the store keeps about a token: never the token itself."""

    digest: str
    expires_at: datetime
    environ: Mapping[str, str] = field(default_factory=dict)
    revoked: bool = False
    #: Who the token was made for (``generate_token(..., subject)``); owns the jobs it creates.
    subject: Optional[str] = None

    def is_expired(self, now: Optional[datetime] = None) -> bool:
        return (now or utcnow()) >= self.expires_at


def _random_token() -> str:
    """32 random bytes in URL-safe base64, never starting with ``-``.

    One draw in 64 would start with ``-``, and a command line then reads the token as an option:
    ``twitcherctl revoke -Xy...`` failed with "one of the arguments token -A/--all is required".
    Drawing again costs log2(64/63), about 0.02 of the 256 bits.
    """
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def new_token(valid_in_hours: float, environ: Optional[Mapping[str, str]] = None,
              now: Optional[datetime] = None, subject: Optional[str] = None) -> Tuple[str, AccessToken]:
    """Make a fresh token; return the clear-text token (for the client only) and its record."""
    token = _random_token()
    # Whole seconds: expires_at travels as int epoch seconds over XML-RPC and as BSON dates.
    start = (now or utcnow()).replace(microsecond=0)
    record = AccessToken(
        digest=token_digest(token),
        expires_at=start + timedelta(hours=valid_in_hours),
        environ=dict(environ or {}),
        subject=subject,
    )
    return token, record


def check_token(record: Optional[AccessToken], now: Optional[datetime] = None) -> AccessToken:
    """Return the record when the token may be used now; else raise :class:`AccessDenied`.

    Expiry is judged here, at every use, so correctness never depends on a cleanup job.
    """
    if record is None:
        raise AccessDenied("The access token is unknown.")
    if record.revoked:
        raise AccessDenied("The access token has been revoked.")
    if record.is_expired(now):
        raise AccessDenied("The access token has expired.")
    return record


def validate_hours(value: Any, max_hours: float) -> float:
    """Check ``valid_in_hours`` of ``generate_token``: a positive number up to the maximum."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            raise InvalidArgument(f"valid_in_hours must be a number, got {value!r}") from None
    if value != value or value <= 0:  # value != value: NaN
        raise InvalidArgument(f"valid_in_hours must be greater than 0, got {value!r}")
    if value > max_hours:
        raise InvalidArgument(f"valid_in_hours must be at most {max_hours:g} (twitcher.token_max_hours), got {value!r}")
    return float(value)


SUBJECT_MAX = 256


def validate_subject(subject: Any) -> Optional[str]:
    """Check the ``subject`` of ``generate_token``: None or empty for none, else a string of at
    most 256 printable characters (a user name, an e-mail address, an OpenID ``sub``)."""
    if subject is None or subject == "":
        return None
    if not isinstance(subject, str):
        raise InvalidArgument(f"subject must be a string, got {type(subject).__name__}")
    if len(subject) > SUBJECT_MAX:
        raise InvalidArgument(f"subject is longer than {SUBJECT_MAX} characters")
    if not subject.isprintable() or subject != subject.strip():
        raise InvalidArgument("subject must be printable, without leading or trailing spaces")
    return subject


def validate_environ(environ: Any) -> dict:
    """Check the data attached to a token before it may ever reach a WSGI environ.

    A flat struct of strings, bounded in count and size, whose keys are names that cannot
    overwrite WSGI, CGI, server or framework keys.
    """
    if environ is None:
        return {}
    if not isinstance(environ, Mapping):
        raise InvalidArgument(f"environ must be a struct of strings, got {type(environ).__name__}")
    if len(environ) > ENVIRON_MAX_ITEMS:
        raise InvalidArgument(f"environ may hold at most {ENVIRON_MAX_ITEMS} entries, got {len(environ)}")
    clean = {}
    for key, value in environ.items():
        if not isinstance(key, str) or not _ENVIRON_KEY.match(key) or len(key) > ENVIRON_MAX_KEY:
            raise InvalidArgument(
                f"environ key {key!r} is not allowed: use letters, digits and _ "
                f"(at most {ENVIRON_MAX_KEY} characters, starting with a letter)")
        if key.upper() in _RESERVED_KEYS or key.upper().startswith(_RESERVED_PREFIXES):
            raise InvalidArgument(f"environ key {key!r} is reserved for the server and cannot be set")
        if not isinstance(value, str):
            raise InvalidArgument(f"environ value of {key!r} must be a string, got {type(value).__name__}")
        if len(value) > ENVIRON_MAX_VALUE:
            raise InvalidArgument(f"environ value of {key!r} is longer than {ENVIRON_MAX_VALUE} characters")
        clean[key] = value
    return clean


def _param_name(pair: str) -> str:
    name = pair.partition("=")[0]
    if "%" in name or "+" in name:  # unquote_plus is the costly part, and rarely needed
        name = unquote_plus(name)
    return name.strip().lower()


def token_params(query_string: str) -> List[str]:
    """The values of every token parameter in a raw query string, in order."""
    return [unquote_plus(pair.partition("=")[2]) for pair in query_string.split("&")
            if _param_name(pair) in TOKEN_PARAMS]


def strip_token_params(query_string: str) -> str:
    """The raw query string without token parameters, every other byte kept as it was.

    Only ``&`` separates pairs: WPS ``DataInputs=a=1;b=2`` uses ``;`` inside a value and must
    reach the backend unchanged.
    """
    # Fast path only when no parameter name can spell "token", not even percent-encoded.
    if "token" not in query_string.lower() and "%" not in query_string:
        return query_string
    return "&".join(pair for pair in query_string.split("&") if _param_name(pair) not in TOKEN_PARAMS)
