"""The one module that talks to the Biscuit library (``biscuit-python``, pinned to 0.4.x).

Biscuit is pre-1.0 and its Python API has changed between minor versions; everything else in
Twitcher calls the small API below (keys, :func:`mint`, :func:`attenuate`, :func:`verify`,
:func:`revocation_ids`), so that an upgrade touches this file only.

What a token says (Datalog, authority block, signed by the issuer's key):

* facts ``issuer(SITE)``, ``subject(S)`` (optional), ``environ(KEY, VALUE)`` (any number) and
  ``issuer_key(BYTES)`` (see :func:`attenuate`);
* checks ``time($t), $t < EXPIRY``, and when restricted ``service($s), SET.contains($s)`` and
  ``operation($o), SET.contains($o)``.

Blocks appended by a holder carry more checks of the same three kinds. The verifier states
``time``, ``service`` and ``operation`` for the request and trusts facts of the authority block
only (Biscuit's default scope), so a block can only narrow what a token allows: facts a holder
adds are seen by nobody but that block's own checks.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import biscuit_auth as lib

from .issuers import key_id, parse_public_key

#: Opaque tokens are 43 characters (older ones 32); a Biscuit is several hundred. A token longer
#: than this is judged as a signed token, a shorter one goes to the store.
OPAQUE_MAX_LENGTH = 128
#: Longer tokens are refused before parsing: Datalog evaluation must stay bounded.
SIGNED_MAX_LENGTH = 8192
#: Wall-clock limit of the Datalog evaluation of one token (the authorization and the queries of
#: its claims). The library's default, 1 ms, is ten times what our tokens need on an idle machine,
#: but it is wall-clock time: a thread preempted on a busy machine overran 1 ms and even 50 ms in
#: the test suite (load 12 on 2 cores), and valid tokens were refused. It is only a backstop:
#: holder blocks may hold nothing but our three kinds of check (:data:`_HOLDER_CHECK`), so a
#: crafted block cannot make the evaluation expensive, and the authority block is the issuer's.
EVALUATION_MAX_TIME = timedelta(milliseconds=500)
#: The only lines a block after the authority block may hold: what :func:`attenuate` writes.
_HOLDER_CHECK = re.compile(
    r'check if (?:time\(\$t\), \$t < [0-9T:.+\-Z]+'
    r'|service\(\$s\), \{(?:"[a-z0-9_:-]+"(?:, )?)*\}\.contains\(\$s\)'
    r'|operation\(\$o\), \{(?:"[a-z0-9]+"(?:, )?)*\}\.contains\(\$o\));')
HOLDER_BLOCK = "a holder's block holds more than service, operation and time checks"
#: Tokens whose signatures :class:`TrustedKeys` remembers (least recently used go first).
VERIFIED_CACHE_SIZE = 1024

#: PKCS#8 prefix of a raw 32-byte Ed25519 private key, so that key files are ordinary PEM
#: (``openssl genpkey -algorithm ed25519`` writes the same kind of file).
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_ISSUER_KEY = re.compile(r"issuer_key\(hex:([0-9a-f]{64})\)")

#: Reasons a token is refused, as written to the log. ``SCOPE`` reasons mean an authentic,
#: live token used outside what it allows (403); the others mean no usable token (401).
MALFORMED = "malformed signed token"
TOO_LONG = "signed token too long"
NO_KEY_ID = "signed token names no key id"
UNKNOWN_KEY = "signed by an unknown key"
BAD_SIGNATURE = "bad signature"
WRONG_ISSUER = "issuer does not own the signing key"
EXPIRED = "expired"
WRONG_SERVICE = "wrong service"
WRONG_OPERATION = "wrong operation"
FAILED_CHECK = "a check of the token failed"
SCOPE = frozenset({WRONG_SERVICE, WRONG_OPERATION})


class SignedTokenError(Exception):
    """A signed token is refused; ``reason`` is one of the constants above, ``detail`` may add to it."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def out_of_scope(self) -> bool:
        """True when the token is authentic and live but does not cover this request."""
        return self.reason in SCOPE


@dataclass(frozen=True)
class SigningKey:
    """Our private key, ready to sign; ``public_key`` is its lower-case hex, ``key_id`` its id."""

    private: object = field(repr=False)
    public_key: str
    key_id: int


@dataclass(frozen=True)
class Claims:
    """What a verified signed token says, for the caller (the tween reads ``environ``)."""

    issuer: str
    subject: Optional[str]
    environ: Mapping[str, str]
    revocation_ids: Tuple[str, ...]
    key_id: int
    #: The expiry the issuer signed; read for revocation only (None on the hot path).
    expires_at: Optional[datetime] = None


def looks_signed(token: str) -> bool:
    """Tell a signed token from an opaque one by its shape (length) alone, without parsing."""
    return len(token) > OPAQUE_MAX_LENGTH


# -- keys --------------------------------------------------------------------------------


def generate_private_key_pem() -> str:
    """A new Ed25519 private key as a PKCS#8 PEM text."""
    raw = bytes(lib.KeyPair().private_key.to_bytes())
    body = base64.encodebytes(_PKCS8_ED25519_PREFIX + raw).decode("ascii")
    return f"-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n"


def load_signing_key(pem: str) -> SigningKey:
    """The signing key in a PEM text; ValueError when it is not an Ed25519 private key."""
    try:
        pair = lib.KeyPair.from_private_key(lib.PrivateKey.from_pem(pem))
    except Exception as exc:  # the library raises ValueError or its own errors, never naming the key
        raise ValueError("not an Ed25519 private key in PEM form") from exc
    public = bytes(pair.public_key.to_bytes()).hex()
    return SigningKey(private=pair.private_key, public_key=public, key_id=key_id(public))


def public_key_text(public_key_hex: str) -> str:
    """The form operators copy into ``twitcher.trusted_issuers``: ``ed25519/`` and hex."""
    return "ed25519/" + public_key_hex


def _public_key(public_key_hex: str):
    return lib.PublicKey(public_key_text(parse_public_key(public_key_hex)))


class TrustedKeys:
    """The public keys this site accepts, by key id, each with the site that owns it.

    Also remembers the tokens whose signatures it verified lately (:meth:`verified`): a client
    sends the same token with every request, and the Ed25519 checks (about 70 µs a block) are
    most of the cost of a signed token. Only successes are remembered, keyed by the whole token
    text, so a changed byte is a new token; expiry, scope and revocation are judged every time.
    """

    def __init__(self, keys: Mapping[str, str], cache_size: int = VERIFIED_CACHE_SIZE):
        """``keys`` maps public key hex to its site id."""
        self._by_id: Dict[int, Tuple[str, object]] = {
            key_id(hex_key): (site, _public_key(hex_key)) for hex_key, site in keys.items()}
        self.verified = lru_cache(maxsize=cache_size)(self._verify)

    def __len__(self) -> int:
        return len(self._by_id)

    def lookup(self, kid: int) -> Optional[Tuple[str, object]]:
        return self._by_id.get(kid)

    def _verify(self, token: str) -> Tuple[str, int, object, Tuple[str, ...]]:
        """Issuer, key id, library object and revocation ids of a token whose signatures verify."""
        if len(token) > SIGNED_MAX_LENGTH:
            raise SignedTokenError(TOO_LONG)
        try:
            unverified = lib.UnverifiedBiscuit.from_base64(token)
            kid = unverified.root_key_id()
        except Exception:
            raise SignedTokenError(MALFORMED) from None
        if kid is None:
            raise SignedTokenError(NO_KEY_ID)
        found = self.lookup(kid)
        if found is None:
            raise SignedTokenError(UNKNOWN_KEY, f"key id {kid}")
        issuer, public_key = found
        try:
            verified = unverified.verify(public_key)
        except Exception:
            raise SignedTokenError(BAD_SIGNATURE, f"key id {kid} of {issuer}") from None
        for index in range(1, verified.block_count()):
            lines = verified.block_source(index).splitlines()
            if not all(_HOLDER_CHECK.fullmatch(line) for line in lines if line):
                raise SignedTokenError(HOLDER_BLOCK, f"block {index}")
        return issuer, kid, verified, tuple(verified.revocation_ids)


# -- tokens ------------------------------------------------------------------------------


def _scope_checks(block, services: Collection[str], operations: Collection[str],
                  expires_at: Optional[datetime]) -> None:
    if expires_at is not None:
        block.add_code("check if time($t), $t < {expiry};", {"expiry": _aware(expires_at)})
    if services:
        block.add_code("check if service($s), {allowed}.contains($s);", {"allowed": set(services)})
    if operations:
        block.add_code("check if operation($o), {allowed}.contains($o);",
                       {"allowed": {op.lower() for op in operations}})


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def mint(key: SigningKey, issuer: str, expires_at: datetime, subject: Optional[str] = None,
         services: Collection[str] = (), operations: Collection[str] = (),
         environ: Optional[Mapping[str, str]] = None) -> str:
    """A new signed token (URL-safe base64). Empty ``services``/``operations``: no restriction."""
    builder = lib.BiscuitBuilder()
    builder.set_root_key_id(key.key_id)
    builder.add_code("issuer({issuer}); issuer_key({public});",
                     {"issuer": issuer, "public": bytes.fromhex(key.public_key)})
    if subject is not None:
        builder.add_code("subject({subject});", {"subject": subject})
    for name, value in (environ or {}).items():
        builder.add_code("environ({name}, {value});", {"name": name, "value": value})
    _scope_checks(builder, services, operations, expires_at)
    return builder.build(key.private).to_base64()


def attenuate(token: str, services: Collection[str] = (), operations: Collection[str] = (),
              expires_at: Optional[datetime] = None) -> str:
    """A narrower token: ``token`` plus a block of checks. Needs no private key and no server.

    biscuit-python 0.4 can append to an unverified token but not serialise the result, so the
    token is first read back with the issuer's public key that the authority block carries
    (``issuer_key``). That key is only used to satisfy the library here; verifiers never trust
    it, they use their own list of trusted keys.
    """
    if not (services or operations or expires_at):
        raise ValueError("nothing to narrow: give services, operations or an expiry")
    try:
        unverified = lib.UnverifiedBiscuit.from_base64(token)
        match = _ISSUER_KEY.search(unverified.block_source(0))
        if match is None:
            raise ValueError("the token carries no issuer key (not minted by Twitcher)")
        parent = lib.Biscuit.from_base64(token, lib.PublicKey(public_key_text(match.group(1))))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"not a valid signed token ({type(exc).__name__})") from None
    block = lib.BlockBuilder("")
    _scope_checks(block, services, operations, expires_at)
    return parent.append(block).to_base64()


def revocation_ids(token: str) -> List[str]:
    """The revocation ids of ``token``, one per block, oldest first; the signature is not checked.

    A derived token carries its parent's ids followed by its own, so revoking the last id of a
    token kills it and everything derived from it, and nothing it was derived from.
    """
    try:
        return list(lib.UnverifiedBiscuit.from_base64(token).revocation_ids)
    except Exception as exc:
        raise ValueError(f"not a signed token ({type(exc).__name__})") from None


def _reason_of(message: str) -> str:
    """Which check failed, from the library's message (only to say why; any failure refuses)."""
    if "no matching policy" in message:
        return WRONG_ISSUER
    if "time($" in message:
        return EXPIRED
    if "service($" in message:
        return WRONG_SERVICE
    if "operation($" in message:
        return WRONG_OPERATION
    return FAILED_CHECK


def _claims(authorizer, issuer: str, kid: int, ids: Tuple[str, ...]) -> Claims:
    try:
        subjects = [fact.terms[0] for fact in authorizer.query(_SUBJECT)]
        environ = {str(k): str(v) for k, v in (fact.terms for fact in authorizer.query(_ENVIRON))}
    except Exception as exc:
        raise SignedTokenError(FAILED_CHECK, type(exc).__name__) from None
    subject = str(subjects[0]) if len(subjects) == 1 else None
    return Claims(issuer=issuer, subject=subject, environ=environ, revocation_ids=ids, key_id=kid)


def _authorizer(code: Optional[str] = None, facts: Optional[dict] = None):
    builder = lib.AuthorizerBuilder(code, facts)
    limits = builder.limits()
    limits.max_time = EVALUATION_MAX_TIME
    builder.set_limits(limits)
    return builder


def read_verified(token: str, keys: TrustedKeys) -> Claims:
    """The claims of a token signed by a trusted key, judging neither expiry nor scope (to revoke it)."""
    issuer, kid, verified, ids = keys.verified(token)
    try:
        authorizer = _authorizer().build(verified)
    except Exception as exc:
        raise SignedTokenError(FAILED_CHECK, type(exc).__name__) from None
    claims = _claims(authorizer, issuer, kid, ids)
    issuers = [fact.terms[0] for fact in authorizer.query(_ISSUER)]
    if issuers != [issuer]:
        raise SignedTokenError(WRONG_ISSUER)
    expiry = _AUTHORITY_EXPIRY.search(verified.block_source(0))
    if expiry is None:
        return claims
    return replace(claims, expires_at=datetime.fromisoformat(expiry.group(1).replace("Z", "+00:00")))


#: The expiry check of an authority block as the library prints it (see :func:`mint`).
_AUTHORITY_EXPIRY = re.compile(r"check if time\(\$t\), \$t < ([0-9T:.+\-Z]+);")


_ISSUER = lib.Rule("claim($i) <- issuer($i)")
_SUBJECT = lib.Rule("claim($s) <- subject($s)")
_ENVIRON = lib.Rule("claim($k, $v) <- environ($k, $v)")


def verify(token: str, keys: TrustedKeys, service: Optional[str], operation: Optional[str],
           check_revoked: Callable[[str, Sequence[str]], None], now: Optional[datetime] = None) -> Claims:
    """Verify ``token`` for a request to ``service`` / ``operation`` at ``now``; return its claims.

    ``service`` or ``operation`` None states nothing about it, so only tokens without that
    restriction pass (fail closed). ``check_revoked(issuer, ids)`` raises to refuse; it runs
    after the signature is checked and before the Datalog. Raises :class:`SignedTokenError`.
    """
    issuer, kid, verified, ids = keys.verified(token)
    check_revoked(issuer, ids)

    facts = {"now": _aware(now) if now else datetime.now(timezone.utc), "issuer": issuer}
    code = "time({now}); allow if issuer({issuer});"
    if service is not None:
        code += "service({service});"
        facts["service"] = service
    if operation is not None:
        code += "operation({operation});"
        facts["operation"] = operation.lower()
    try:
        authorizer = _authorizer(code, facts).build(verified)
        authorizer.authorize()
    except lib.AuthorizationError as exc:
        raise SignedTokenError(_reason_of(str(exc))) from None
    except Exception as exc:  # limits exceeded, malformed Datalog: refuse
        raise SignedTokenError(FAILED_CHECK, type(exc).__name__) from None
    return _claims(authorizer, issuer, kid, ids)
