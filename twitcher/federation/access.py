"""The token decision the OWS security tween asks for, signed and opaque tokens alike.

:func:`check_access` tells the two kinds apart by shape (:func:`.biscuit.looks_signed`):

* an **opaque** token is looked up in the store, as before;
* a **signed** token is verified from its signature, our trusted keys, its expiry, the request's
  service name and operation, and the revocation lists in memory: no store query.

What the tween passes as the *operation*: the lower-case OWS request name (``execute``,
``getcapabilities``, ...) for a request at a service root, and None for a request below it
(status documents, outputs) or at an unknown path. None states no operation, so only tokens
without an operation restriction pass there (fail closed). The *service* is the registered
service name for the proxy, :data:`INTERNAL_WPS` for Twitcher's own WPS, None elsewhere.

A refusal names the failed check and the token's fingerprint in the log (INFO), never the token.
The client gets 401 for no usable token (malformed, unknown key, bad signature, expired,
revoked, stale list) and 403 for an authentic, live token used outside its scope.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Collection, Dict, Mapping, Optional, Union

from ..exceptions import AccessDenied, ConfigurationError, TokenOutOfScope
from ..settings import TwitcherSettings
from ..tokens import AccessToken, check_token, fingerprint, token_digest, utcnow
from . import biscuit
from .keys import read_signing_key
from .revocation import REVOKED, RevocationLists
from .scope import INTERNAL_WPS  # the service name of the internal WPS in a signed token

log = logging.getLogger(__name__)


class Federation:
    """Our signing key (if any), the keys we trust and the revocation lists; one per application."""

    def __init__(self, site_id: Optional[str], signing_key: Optional[biscuit.SigningKey],
                 keys: biscuit.TrustedKeys, revocations: RevocationLists):
        self.site_id = site_id
        self.signing_key = signing_key
        self.keys = keys
        self.revocations = revocations

    # -- minting and revoking (admin API) -----------------------------------------------

    def mint(self, expires_at: datetime, subject: Optional[str] = None, services: Collection[str] = (),
             operations: Collection[str] = (), environ: Optional[Mapping[str, str]] = None) -> str:
        """A signed token of this site; ValueError when this site has no signing key."""
        if self.signing_key is None or self.site_id is None:
            raise ValueError("this site cannot sign tokens: twitcher.signing_key and twitcher.site_id are not set")
        token = biscuit.mint(self.signing_key, self.site_id, expires_at, subject=subject,
                             services=services, operations=operations, environ=environ)
        # Recorded so that revoke_all_tokens can revoke signed tokens too (admin API only).
        self.revocations.store.record_signed_token(biscuit.revocation_ids(token)[0], expires_at)
        return token

    def revoke(self, token: str, max_hours: float) -> bool:
        """Revoke a signed token and every token derived from it; True when it was live and not revoked yet.

        The token must verify against a key we trust (so nobody fills our list with junk). Its
        last revocation id is stored: that id is in every token derived from it, and in none of
        the tokens it was derived from. The id is published until the token's own expiry (or,
        if the token does not say, ``max_hours`` from now).
        """
        claims = self.inspect(token)
        now = utcnow()
        if claims is None or (claims.expires_at is not None and claims.expires_at <= now):
            return False
        last = claims.revocation_ids[-1]
        keep_until = claims.expires_at or now + timedelta(hours=max_hours)
        newly = self.revocations.store.revoke_ids([last], keep_until)
        self.revocations.add_own([last])
        return newly > 0

    def inspect(self, token: str) -> Optional[biscuit.Claims]:
        """The claims of a signed token with a good signature from a trusted key, else None.

        Expiry and scope are not judged: an admin may revoke a token that is out of scope here.
        """
        try:
            return biscuit.read_verified(token, self.keys)
        except biscuit.SignedTokenError as exc:
            log.info("signed token %s not revocable here: %s", fingerprint(token), exc)
            return None

    def revoke_all(self) -> int:
        return self.revocations.store.revoke_all_signed_tokens()

    # -- the hot path -------------------------------------------------------------------

    def verify(self, token: str, service: Optional[str], operation: Optional[str]) -> biscuit.Claims:
        """Claims of a signed token allowed for this request; AccessDenied/TokenOutOfScope otherwise."""
        try:
            if len(self.keys) == 0:
                raise biscuit.SignedTokenError(biscuit.UNKNOWN_KEY, "no trusted issuers configured")
            return biscuit.verify(token, self.keys, service, operation, self.revocations.check)
        except biscuit.SignedTokenError as exc:
            log.info("signed token %s refused: %s", fingerprint(token), exc)
            if exc.out_of_scope:
                raise TokenOutOfScope("The access token does not allow this request.") from None
            raise AccessDenied(_CLIENT_TEXT.get(exc.reason, "The access token is not valid here.")) from None


#: What the client is told; the log says more (which key, which list).
_CLIENT_TEXT = {
    biscuit.EXPIRED: "The access token has expired.",
    REVOKED: "The access token has been revoked.",
}


def check_access(registry, token: str, service: Optional[str],
                 operation: Optional[str]) -> Union[AccessToken, biscuit.Claims]:
    """The tween's one call: the token's record or claims (both have ``environ``), or a refusal."""
    if biscuit.looks_signed(token):
        return registry.federation.verify(token, service, operation)
    return check_token(registry.store.fetch_token(token_digest(token)))


# -- building it once --------------------------------------------------------------------


def trusted_key_map(settings: TwitcherSettings, signing_key: Optional[biscuit.SigningKey]) -> Dict[str, str]:
    """Public key hex -> site id: our own key, and every key of ``twitcher.trusted_issuers``."""
    keys: Dict[str, str] = {}
    if signing_key is not None:
        keys[signing_key.public_key] = settings.site_id
    for issuer in settings.trusted_issuers:
        for key in issuer.public_keys:
            if keys.get(key, issuer.site_id) != issuer.site_id:
                raise ConfigurationError(f"twitcher.trusted_issuers: the key of {issuer.site_id!r} is our own key")
            keys[key] = issuer.site_id
    return keys


def revocation_sources(settings: TwitcherSettings) -> Dict[str, str]:
    """Site id -> revocation list URL of every issuer but ourselves (each must have one)."""
    sources = {}
    for issuer in settings.trusted_issuers:
        if issuer.site_id == settings.site_id:
            continue  # our older keys: our own store is our list
        if not issuer.revocation_url:
            raise ConfigurationError(
                f"twitcher.trusted_issuers: site {issuer.site_id!r} needs the URL of its revocation list "
                "(https://.../ows/revoked) after its keys")
        sources[issuer.site_id] = issuer.revocation_url
    return sources


def build_federation(settings: TwitcherSettings, store) -> Federation:
    """Read the signing key and the trusted keys; ConfigurationError names the bad setting."""
    signing_key = None
    if settings.signing_key:
        if not settings.site_id:
            raise ConfigurationError("twitcher.site_id must be set when twitcher.signing_key is: "
                                     "it is the issuer named in every signed token")
        signing_key = read_signing_key(settings.signing_key)
    keys = biscuit.TrustedKeys(trusted_key_map(settings, signing_key))
    revocations = RevocationLists(settings.site_id, revocation_sources(settings), store,
                                  settings.revocation_poll_seconds, settings.revocation_max_age_seconds)
    return Federation(settings.site_id, signing_key, keys, revocations)


__all__ = ["Federation", "INTERNAL_WPS", "build_federation", "check_access"]
