"""HTTP Basic Auth for the admin API: the security policy, and how admin passwords are hashed and checked.

``twitcher.password`` holds either the password itself or a hash made by
``twitcherctl hash-password``::

    pbkdf2_sha256$<iterations>$<salt, urlsafe base64>$<derived key, urlsafe base64>

(PBKDF2-HMAC-SHA256 from the standard library, 32-byte key). Only the admin API carries the
``admin`` permission; every other route needs no permission, so this policy changes nothing there.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
from typing import Optional, Tuple

from pyramid.authentication import extract_http_basic_credentials
from pyramid.httpexceptions import HTTPLengthRequired, HTTPRequestEntityTooLarge, HTTPUnauthorized
from pyramid.security import Allowed, Denied
from pyramid.tweens import EXCVIEW

from ..exceptions import ConfigurationError

log = logging.getLogger(__name__)

ADMIN_PERMISSION = "admin"
ADMIN_PATH = "/RPC2"
_IDENTITY_KEY = "twitcher.admin_identity"
REALM = "twitcher"
HASH_SCHEME = "pbkdf2_sha256"
#: OWASP's 2023 figure for PBKDF2-HMAC-SHA256; a hash keeps its own count, so it can change later.
DEFAULT_ITERATIONS = 600_000
#: Below this a hash is too cheap to brute-force-protect anything; refused at start-up.
MIN_ITERATIONS = 10_000
#: A hash with more iterations would let a bad setting stall every admin call.
MAX_ITERATIONS = 10_000_000
_KEY_BYTES = 32
_SALT_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations, dklen=_KEY_BYTES)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The ``pbkdf2_sha256$...`` string to put into ``twitcher.password`` instead of the password."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"{HASH_SCHEME}${iterations}${_b64(salt)}${_b64(_derive(password, salt, iterations))}"


def is_password_hash(value: str) -> bool:
    """True when a ``twitcher.password`` value is meant as a hash (and must then parse as one)."""
    return value.startswith(HASH_SCHEME + "$")


def parse_password_hash(value: str) -> Tuple[int, bytes, bytes]:
    """``(iterations, salt, key)`` of a hash; ValueError saying what is wrong, never echoing the value."""
    parts = value.split("$")
    if len(parts) != 4 or parts[0] != HASH_SCHEME:
        raise ValueError(f"expected {HASH_SCHEME}$<iterations>$<salt>$<hash>")
    try:
        iterations = int(parts[1])
        salt, key = _unb64(parts[2]), _unb64(parts[3])
    except (ValueError, binascii.Error):
        raise ValueError("the iterations must be a number and salt and hash base64") from None
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"the iteration count must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
    if len(salt) < 8 or len(key) != _KEY_BYTES:
        raise ValueError(f"the salt must have at least 8 bytes and the hash {_KEY_BYTES}")
    return iterations, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``pbkdf2_sha256$...`` hash (constant-time comparison)."""
    iterations, salt, key = parse_password_hash(encoded)
    return hmac.compare_digest(_derive(password, salt, iterations), key)


class AdminCredentials:
    """The configured admin user and password, and the one check of a presented pair.

    PBKDF2 costs a good part of a second by design, and portals call the API often. So after a
    successful verification the password is remembered as an HMAC under a key that lives only
    in this process: the cache holds at most one entry (only the right password can get in,
    and the setting never changes at run time), no clear text, and wrong passwords always pay
    the full cost, which is what slows down guessing.
    """

    def __init__(self, username: str, password: str):
        self.username = username
        self._password = password
        self._hashed = is_password_hash(password)
        if self._hashed:
            try:
                parse_password_hash(password)
            except ValueError as exc:
                raise ConfigurationError(f"invalid value for twitcher.password: {exc}") from None
        self._cache_key = secrets.token_bytes(32)
        self._verified: Optional[bytes] = None
        self._lock = threading.Lock()

    def _password_ok(self, password: str) -> bool:
        if not self._password:  # no admin password configured: nobody is admin
            return False
        if not self._hashed:
            return hmac.compare_digest(password.encode("utf-8"), self._password.encode("utf-8"))
        tag = hmac.new(self._cache_key, password.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            remembered = self._verified
        if remembered is not None and hmac.compare_digest(tag, remembered):
            return True
        if not verify_password(password, self._password):
            return False
        with self._lock:
            self._verified = tag
        return True

    def check(self, username: str, password: str) -> bool:
        """True for the admin's user name and password; both are always compared, in constant time."""
        user_ok = hmac.compare_digest(username.encode("utf-8"), self.username.encode("utf-8"))
        password_ok = self._password_ok(password)  # also for a wrong user: no timing hint about names
        return user_ok and password_ok


def admin_identity(request) -> Optional[dict]:
    """The admin's identity when the request carries the right Basic credentials, else None.

    Worked out once per request and kept in its environ, so a wrong password costs one
    verification and one log line however often the gate and the policy ask. (Not a reified
    request method: Pyramid would build a new request class for every request, admin or not.)
    """
    try:
        return request.environ[_IDENTITY_KEY]
    except KeyError:
        identity = request.environ[_IDENTITY_KEY] = _check_credentials(request)
        return identity


def _check_credentials(request) -> Optional[dict]:
    credentials = extract_http_basic_credentials(request)
    if credentials is None:
        if request.authorization is not None:
            log.warning("admin API: unusable Authorization header from %s", request.client_addr)
        return None
    if request.registry.admin_credentials.check(credentials.username, credentials.password):
        return {"userid": credentials.username}
    log.warning("admin API: authentication failed for user %r from %s",
                credentials.username[:64], request.client_addr)
    return None


class AdminSecurityPolicy:
    """Pyramid security policy: whoever presents the admin's Basic credentials holds ``admin``."""

    def identity(self, request) -> Optional[dict]:
        return admin_identity(request)

    def authenticated_userid(self, request) -> Optional[str]:
        identity = admin_identity(request)
        return identity["userid"] if identity else None

    def permits(self, request, context, permission):
        if permission == ADMIN_PERMISSION and admin_identity(request) is not None:
            return Allowed("admin credentials")
        return Denied("admin credentials required")

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return [("WWW-Authenticate", f'Basic realm="{REALM}"')]


def challenge(request) -> HTTPUnauthorized:
    """The answer to missing or wrong admin credentials: 401 asking for Basic Auth."""
    return HTTPUnauthorized(
        "Admin credentials are required (HTTP Basic Auth).",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


def admin_gate_tween_factory(handler, registry):
    """Check credentials and body size at ``/RPC2`` before anything reads the body.

    pyramid_rpc parses the XML-RPC body in its route predicate, before any permission check;
    this gate makes sure a stranger's request is answered 401 without its body being read, and
    that nobody's body is larger than ``twitcher.max_request_body``. The permission on every
    method stays as the second line of defence.
    """
    limit = registry.twitcher.max_request_body

    def admin_gate_tween(request):
        if request.path_info != ADMIN_PATH:
            return handler(request)
        if admin_identity(request) is None:
            return challenge(request)
        if request.method == "POST":
            if request.content_length is None:
                return HTTPLengthRequired("The admin API needs a Content-Length header.")
            if request.content_length > limit:
                return HTTPRequestEntityTooLarge(f"The request body is larger than {limit} bytes.")
        return handler(request)

    return admin_gate_tween


def includeme(config) -> None:
    """Install the admin security policy; a malformed password hash stops the start-up."""
    settings = config.registry.twitcher
    config.registry.admin_credentials = AdminCredentials(settings.username, settings.password or "")
    config.set_security_policy(AdminSecurityPolicy())
    # Over everything but the exception views: the gate answers itself and raises nothing.
    config.add_tween("twitcher.admin.auth.admin_gate_tween_factory", under=EXCVIEW)
