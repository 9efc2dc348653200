"""Signed tokens on one site: keys, minting, verification, attenuation, revocation lists, admin API, CLI.

The two-site tests (real servers, a token from A used at B) are in tests/test_federation_sites.py.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import time
import xmlrpc.client
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Tuple

import biscuit_auth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.test_admin_rpcinterface import rpc
from tests.test_store import run_in_child
from tests.test_wps import EXECUTE, PROCESSES, output_data
from twitcher.admin import client
from twitcher.exceptions import AccessDenied, ConfigurationError, StoreUnavailable, TokenOutOfScope
from twitcher.federation import biscuit
from twitcher.federation.access import INTERNAL_WPS, build_federation
from twitcher.federation.issuers import TrustedIssuer, key_id, parse_trusted_issuers
from twitcher.federation.keys import read_signing_key, write_signing_key
from twitcher.federation.revocation import RevocationLists, parse_list
from twitcher.services import service_from_registration
from twitcher.settings import parse_settings
from twitcher.tokens import utcnow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
ADMIN_AUTH = "Basic " + base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def key_a(tmp_path_factory) -> biscuit.SigningKey:
    """Site A's signing key (a real file, mode 0600), shared by the module."""
    return write_signing_key(str(tmp_path_factory.mktemp("keys") / "a.pem"))


@pytest.fixture(scope="module")
def key_b(tmp_path_factory) -> biscuit.SigningKey:
    return write_signing_key(str(tmp_path_factory.mktemp("keys") / "b.pem"))


def keys_of(*pairs: Tuple[biscuit.SigningKey, str]) -> biscuit.TrustedKeys:
    return biscuit.TrustedKeys({key.public_key: site for key, site in pairs})


def never_revoked(issuer, ids) -> None:
    pass


def judge(token: str, keys: biscuit.TrustedKeys, service: Optional[str], operation: Optional[str],
          now: datetime = NOW) -> Optional[str]:
    """None when ``token`` is accepted, else the reason it was refused."""
    try:
        biscuit.verify(token, keys, service, operation, never_revoked, now=now)
    except biscuit.SignedTokenError as exc:
        return exc.reason
    return None


# -- settings: trusted issuers --------------------------------------------------------------


def test_trusted_issuers_one_line_per_site_with_keys_and_list_url(key_a, key_b):
    text = f"""
        site-a = ed25519/{key_a.public_key} https://a.example.org/ows/revoked
        # a comment
        site-b = {key_b.public_key.upper()} {'1' * 64} http://b.example.org/ows/revoked
    """
    assert parse_trusted_issuers(text) == (
        TrustedIssuer("site-a", (key_a.public_key,), "https://a.example.org/ows/revoked"),
        TrustedIssuer("site-b", (key_b.public_key, "1" * 64), "http://b.example.org/ows/revoked"),
    )


@pytest.mark.parametrize("text, message", [
    ("site-a ed25519/" + "1" * 64, "SITE_ID = PUBLIC_KEY"),
    ("site a = " + "1" * 64, "site id"),
    ("site-a = https://a.example.org/ows/revoked", "no public key"),
    ("site-a = ed25519/" + "1" * 63, "Ed25519 public key"),
    ("site-a = " + "1" * 64 + "\nsite-a = " + "2" * 64, "listed twice"),
    ("site-a = " + "1" * 64 + "\nsite-b = " + "1" * 64, "listed already"),
])
def test_bad_trusted_issuers_stop_start_up_naming_the_setting(text, message):
    with pytest.raises(ConfigurationError, match=f"twitcher.trusted_issuers.*{message}"):
        parse_settings({"twitcher.trusted_issuers": text, "twitcher.rpcinterface": "false"}, environ={})


def test_key_id_is_derived_from_the_key_and_carried_by_the_token(key_a):
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1))
    assert key_a.key_id == key_id(key_a.public_key)
    assert biscuit_auth.UnverifiedBiscuit.from_base64(token).root_key_id() == key_a.key_id


def test_foreign_issuer_without_a_list_url_stops_start_up(key_b, store):
    settings = parse_settings({"twitcher.rpcinterface": "false",
                               "twitcher.trusted_issuers": f"site-b = {key_b.public_key}"}, environ={})
    with pytest.raises(ConfigurationError, match="site-b.*revocation list"):
        build_federation(settings, store)


def test_signing_key_needs_a_site_id(key_a, tmp_path, store):
    path = tmp_path / "k.pem"
    write_signing_key(str(path))
    settings = parse_settings({"twitcher.rpcinterface": "false", "twitcher.signing_key": str(path)}, environ={})
    with pytest.raises(ConfigurationError, match="twitcher.site_id"):
        build_federation(settings, store)


# -- key files ------------------------------------------------------------------------------


def test_keygen_writes_a_private_pem_file_and_never_overwrites(tmp_path):
    path = tmp_path / "key.pem"
    key = write_signing_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert read_signing_key(str(path)).public_key == key.public_key
    with pytest.raises(FileExistsError):
        write_signing_key(str(path))
    assert read_signing_key(str(path)).public_key == key.public_key


def test_key_file_readable_by_others_or_not_a_key_is_refused(tmp_path):
    path = tmp_path / "key.pem"
    write_signing_key(str(path))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="readable by other users"):
        read_signing_key(str(path))
    os.chmod(path, 0o600)
    path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError, match="twitcher.signing_key.*not an Ed25519 private key"):
        read_signing_key(str(path))
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_signing_key(str(tmp_path / "missing.pem"))


# -- verification ---------------------------------------------------------------------------


def test_minted_token_carries_its_claims(key_a):
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1), subject="alice",
                         environ={"DATA_TOKEN": "abc", "DATA_USER": "alice"})
    claims = biscuit.verify(token, keys_of((key_a, "site-a")), "emu", "execute", never_revoked, now=NOW)
    assert (claims.issuer, claims.subject, dict(claims.environ)) == (
        "site-a", "alice", {"DATA_TOKEN": "abc", "DATA_USER": "alice"})
    assert len(claims.revocation_ids) == 1 and biscuit.looks_signed(token)


@pytest.mark.parametrize("service, operation, reason", [
    ("emu", "execute", None),
    ("emu", "EXECUTE", None),
    ("emu", "getcapabilities", biscuit.WRONG_OPERATION),
    ("other", "execute", biscuit.WRONG_SERVICE),
    (None, "execute", biscuit.WRONG_SERVICE),
    ("emu", None, biscuit.WRONG_OPERATION),  # below a service root: restricted tokens do not pass
])
def test_restricted_token_is_judged_by_service_and_operation(key_a, service, operation, reason):
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1), services=["emu"], operations=["execute"])
    assert judge(token, keys_of((key_a, "site-a")), service, operation) == reason


def test_unrestricted_token_passes_below_a_service_root_until_it_expires(key_a):
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1))
    keys = keys_of((key_a, "site-a"))
    assert judge(token, keys, "emu", None) is None
    assert judge(token, keys, "emu", None, now=NOW + timedelta(hours=1)) == biscuit.EXPIRED


def test_a_remembered_signature_does_not_skip_expiry_scope_or_revocation(key_a):
    keys = keys_of((key_a, "site-a"))
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1), services=["emu"])
    assert judge(token, keys, "emu", "execute") is None
    assert keys.verified.cache_info().currsize == 1
    assert judge(token, keys, "emu", "execute", now=NOW + timedelta(hours=2)) == biscuit.EXPIRED
    assert judge(token, keys, "other", "execute") == biscuit.WRONG_SERVICE

    def revoked(issuer, ids):
        raise biscuit.SignedTokenError("revoked")

    with pytest.raises(biscuit.SignedTokenError, match="revoked"):
        biscuit.verify(token, keys, "emu", "execute", revoked, now=NOW)
    assert judge(_byte_changed(token, 0.6), keys, "emu", "execute") in (biscuit.MALFORMED, biscuit.BAD_SIGNATURE)


def test_token_of_a_site_signed_with_another_sites_key_is_refused(key_a, key_b):
    """B's key is trusted, but only for site-b: a token claiming site-a signed by B's key fails."""
    token = biscuit.mint(key_b, "site-a", NOW + timedelta(hours=1))
    assert judge(token, keys_of((key_a, "site-a"), (key_b, "site-b")), "emu", "execute") == biscuit.WRONG_ISSUER


# -- tampered tokens ------------------------------------------------------------------------


def _fields(data: bytes) -> List[Tuple[int, bytes]]:
    """The top-level protobuf fields of a serialised Biscuit: (field number, raw bytes of the field)."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        if tag & 7 == 0:
            _, pos = _varint(data, pos)
        elif tag & 7 == 2:
            length, pos = _varint(data, pos)
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {tag & 7}")
        fields.append((tag >> 3, data[start:pos]))
    return fields


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


BLOCKS = 3  # protobuf field number of the attenuation blocks


def _without_block(token: str, index: int) -> str:
    fields = _fields(_raw(token))
    blocks = [i for i, (number, _) in enumerate(fields) if number == BLOCKS]
    del fields[blocks[index]]
    return _b64(b"".join(raw for _, raw in fields))


def _blocks_swapped(token: str) -> str:
    fields = _fields(_raw(token))
    first, second = [i for i, (number, _) in enumerate(fields) if number == BLOCKS][:2]
    fields[first], fields[second] = fields[second], fields[first]
    return _b64(b"".join(raw for _, raw in fields))


def _byte_changed(token: str, where: float) -> str:
    data = bytearray(_raw(token))
    index = int(len(data) * where)
    data[index] ^= 0x01
    return _b64(bytes(data))


def tampered_token(kind: str, key_a: biscuit.SigningKey, now: datetime = NOW) -> str:
    """A token of site-a (key ``key_a``) for emu/execute, tampered with as ``kind`` says."""
    live = now + timedelta(hours=1)
    narrow = biscuit.mint(key_a, "site-a", live, services=["emu"], operations=["execute"])
    if kind.startswith("byte changed"):
        return _byte_changed(narrow, float(kind.split()[-1]))
    twice = biscuit.attenuate(biscuit.attenuate(narrow, operations=["execute"]), services=["emu"])
    if kind == "first block removed":
        return _without_block(twice, 0)
    if kind == "last block removed":
        return _without_block(twice, 1)
    if kind == "blocks reordered":
        return _blocks_swapped(twice)
    if kind == "block appended with a wider check":
        return biscuit.attenuate(narrow, services=["emu", "other"], operations=["execute", "getmap"])
    if kind == "block appended with wider facts":
        # Holder blocks may hold checks only; and their facts would be seen by nobody else anyway.
        block = biscuit_auth.BlockBuilder('service("other"); operation("getmap"); issuer("site-a"); '
                                          'environ("DATA_TOKEN", "forged");')
        parent = biscuit_auth.Biscuit.from_base64(narrow, biscuit_auth.PublicKey("ed25519/" + key_a.public_key))
        return parent.append(block).to_base64()
    if kind == "expired parent with a fresh child":
        old = biscuit.mint(key_a, "site-a", now - timedelta(minutes=1))
        return biscuit.attenuate(old, expires_at=now + timedelta(hours=5))
    if kind == "unknown key":
        return biscuit.mint(biscuit.load_signing_key(biscuit.generate_private_key_pem()), "site-a", live)
    if kind == "unknown key posing with a trusted key id":
        stranger = biscuit.load_signing_key(biscuit.generate_private_key_pem())
        return biscuit.mint(biscuit.SigningKey(stranger.private, stranger.public_key, key_a.key_id), "site-a", live)
    raise AssertionError(kind)


TAMPERED = {
    "byte changed 0.02": (biscuit.MALFORMED, biscuit.UNKNOWN_KEY, biscuit.BAD_SIGNATURE),
    "byte changed 0.3": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "byte changed 0.6": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "byte changed 0.97": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "first block removed": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "last block removed": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "blocks reordered": (biscuit.MALFORMED, biscuit.BAD_SIGNATURE),
    "block appended with a wider check": (biscuit.WRONG_SERVICE,),
    "block appended with wider facts": (biscuit.HOLDER_BLOCK,),
    "expired parent with a fresh child": (biscuit.EXPIRED,),
    "unknown key": (biscuit.UNKNOWN_KEY,),
    "unknown key posing with a trusted key id": (biscuit.BAD_SIGNATURE,),
}


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_tampered_token_is_refused(kind, key_a):
    token = tampered_token(kind, key_a)
    # The wider right asked for: another service and operation; every other case asks for emu/execute.
    service, operation = ("other", "getmap") if kind.startswith("block appended") else ("emu", "execute")
    assert judge(token, keys_of((key_a, "site-a")), service, operation) in TAMPERED[kind]


def test_untampered_tokens_of_the_tampering_cases_pass(key_a):
    """The control: the same tokens before tampering are accepted, so the refusals above mean something."""
    narrow = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1), services=["emu"], operations=["execute"])
    twice = biscuit.attenuate(biscuit.attenuate(narrow, operations=["execute"]), services=["emu"])
    keys = keys_of((key_a, "site-a"))
    assert judge(narrow, keys, "emu", "execute") is None
    assert judge(twice, keys, "emu", "execute") is None
    assert len(_fields(_raw(twice))) == len(_fields(_raw(_b64(_raw(twice)))))


def test_holder_block_with_anything_but_our_checks_is_refused_before_evaluation(key_a):
    narrow = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1))
    parent = biscuit_auth.Biscuit.from_base64(narrow, biscuit_auth.PublicKey("ed25519/" + key_a.public_key))
    keys = keys_of((key_a, "site-a"))
    for code in ('check if true;', 'expensive($x) <- service($x), operation($y), time($z);',
                 'check if service($s), ["emu"].contains($s);'):
        token = parent.append(biscuit_auth.BlockBuilder(code)).to_base64()
        assert judge(token, keys, "emu", "execute") == biscuit.HOLDER_BLOCK, code


# -- attenuation ----------------------------------------------------------------------------


SERVICES = ("emu", "hummingbird", "flyingpigeon")
OPERATIONS = ("execute", "getcapabilities", "describeprocess")
scopes = st.lists(st.sampled_from(SERVICES), max_size=2, unique=True)
op_scopes = st.lists(st.sampled_from(OPERATIONS), max_size=2, unique=True)
offsets = st.integers(min_value=-120, max_value=120)  # minutes around NOW


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parent_services=scopes, parent_ops=op_scopes, parent_life=offsets,
       child_services=scopes, child_ops=op_scopes, child_life=st.one_of(st.none(), offsets),
       service=st.sampled_from(SERVICES + ("other",)), operation=st.sampled_from(OPERATIONS + ("getstatus", None)))
def test_attenuated_token_never_does_more_than_its_parent(key_a, parent_services, parent_ops, parent_life,
                                                          child_services, child_ops, child_life, service, operation):
    keys = keys_of((key_a, "site-a"))
    parent = biscuit.mint(key_a, "site-a", NOW + timedelta(minutes=parent_life),
                          services=parent_services, operations=parent_ops)
    child_expiry = None if child_life is None else NOW + timedelta(minutes=child_life)
    if not (child_services or child_ops or child_expiry):
        child_services = [service] if service != "other" else ["emu"]
    child = biscuit.attenuate(parent, child_services, child_ops, child_expiry)
    parent_ok = judge(parent, keys, service, operation) is None
    child_ok = judge(child, keys, service, operation) is None
    if child_ok:
        assert parent_ok
    # And exactly the intersection: the child passes where the parent and its own block both do.
    own_block = ((not child_services or service in child_services)
                 and (not child_ops or operation in child_ops)
                 and (child_expiry is None or NOW < child_expiry))
    assert child_ok == (parent_ok and own_block)


def test_attenuate_refuses_what_is_not_a_twitcher_token_or_asks_for_nothing(key_a):
    token = biscuit.mint(key_a, "site-a", NOW + timedelta(hours=1))
    with pytest.raises(ValueError, match="nothing to narrow"):
        biscuit.attenuate(token)
    with pytest.raises(ValueError, match="not a valid signed token"):
        biscuit.attenuate("x" * 300, services=["emu"])
    foreign = biscuit_auth.BiscuitBuilder('issuer("site-a");').build(biscuit_auth.KeyPair().private_key)
    with pytest.raises(ValueError, match="no issuer key"):
        biscuit.attenuate(foreign.to_base64(), services=["emu"])


# -- revocation lists -----------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSite:
    """A trusted issuer's list as a fetch function: answers, or fails like an unreachable site."""

    def __init__(self, site_id: str):
        self.site_id = site_id
        self.ids: List[str] = []
        self.up = True

    def __call__(self, url: str, timeout: float) -> bytes:
        if not self.up:
            raise OSError("connection refused")
        return json.dumps({"site_id": self.site_id, "revoked": self.ids}).encode()


@pytest.fixture
def lists(store):
    """Lists of site-a (ourselves, our store) and site-b (a fake site), on a fake clock; no thread."""
    site_b, clock = FakeSite("site-b"), FakeClock()
    found = RevocationLists("site-a", {"site-b": "http://b.invalid/ows/revoked"}, store, poll_seconds=10,
                            max_age_seconds=60, fetch=site_b, clock=clock)
    found.ensure_polling = lambda: None  # driven by hand below
    return found, site_b, clock


def refusal(found: RevocationLists, issuer: str, ids) -> Optional[str]:
    try:
        found.check(issuer, ids)
    except biscuit.SignedTokenError as exc:
        return exc.reason
    return None


def test_nothing_passes_before_the_first_refresh(lists):
    found, _, _ = lists
    assert refusal(found, "site-a", ["aa" * 32]) == "revocation list is stale"
    assert refusal(found, "site-b", ["aa" * 32]) == "revocation list is stale"


def test_issuers_list_revokes_its_own_tokens_and_ours_revokes_all(lists, store):
    found, site_b, _ = lists
    site_b.ids = ["bb" * 32]
    store.revoke_ids(["aa" * 32], utcnow() + timedelta(hours=1))
    found.refresh_all()
    assert refusal(found, "site-b", ["bb" * 32]) == "revoked"
    assert refusal(found, "site-b", ["aa" * 32]) == "revoked"  # revoked here: refused here whoever issued it
    assert refusal(found, "site-a", ["bb" * 32]) is None  # B's list speaks for B's tokens only
    assert refusal(found, "site-b", ["cc" * 32, "dd" * 32]) is None


def test_list_not_refreshed_beyond_the_grace_refuses_that_issuer_only(lists):
    found, site_b, clock = lists
    found.refresh_all()
    site_b.up = False
    clock.now += 50
    found.refresh_all()
    assert refusal(found, "site-b", ["cc" * 32]) is None  # within the grace
    clock.now += 11
    found.refresh_all()
    assert refusal(found, "site-b", ["cc" * 32]) == "revocation list is stale"
    assert refusal(found, "site-a", ["cc" * 32]) is None  # our own list is fresh
    site_b.up = True
    found.refresh_all()
    assert refusal(found, "site-b", ["cc" * 32]) is None


def test_own_store_down_beyond_the_grace_refuses_every_signed_token(lists, monkeypatch):
    found, _, clock = lists
    found.refresh_all()

    def down():
        raise StoreUnavailable("down")

    monkeypatch.setattr(found.store, "revoked_ids", down)
    clock.now += 61
    found.refresh_all()
    assert refusal(found, "site-a", ["cc" * 32]) == "revocation list is stale"
    assert refusal(found, "site-b", ["cc" * 32]) == "revocation list is stale"


@pytest.mark.parametrize("body", [
    b'{"site_id": "site-c", "revoked": []}',
    b'{"site_id": "site-b", "revoked": ["not hex"]}',
    b'{"site_id": "site-b", "revoked": "aa"}',
    b"<html>not json</html>",
])
def test_a_list_that_is_not_the_issuers_is_not_taken(body):
    with pytest.raises(ValueError):
        parse_list(body, "site-b")


def test_poller_thread_refreshes_and_stops(store):
    site_b = FakeSite("site-b")
    found = RevocationLists("site-a", {"site-b": "http://b.invalid"}, store, poll_seconds=0.05,
                            max_age_seconds=60, fetch=site_b)
    try:
        assert refusal(found, "site-b", ["bb" * 32]) is None  # the first check waited for the first round
        site_b.ids = ["bb" * 32]
        for _ in range(200):
            if refusal(found, "site-b", ["bb" * 32]) == "revoked":
                break
            found._stop.wait(0.05)
        assert refusal(found, "site-b", ["bb" * 32]) == "revoked"
    finally:
        found.stop()
    assert found._thread is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_poller(store):
    """gunicorn forks after loading the app: threads do not survive a fork, so the child needs its own."""
    site_b = FakeSite("site-b")
    found = RevocationLists("site-a", {"site-b": "http://b.invalid"}, store, poll_seconds=0.05,
                            max_age_seconds=60, fetch=site_b)
    try:
        found.check("site-b", ["bb" * 32])
        parent_thread = found._thread

        def child_work() -> bool:
            site_b.ids = ["bb" * 32]  # only the child's poller can see this
            for _ in range(100):
                if refusal(found, "site-b", ["bb" * 32]) == "revoked":
                    return found._thread is not parent_thread and found._thread.is_alive()
                time.sleep(0.05)
            return False

        assert run_in_child(child_work) == 0
    finally:
        found.stop()


# -- the application: admin API, tween, internal WPS, /ows/revoked ---------------------------


@pytest.fixture
def signing_settings(app_settings, tmp_path):
    """``app_settings`` for site-a with a fresh signing key; yields the settings."""
    path = tmp_path / "site-a.pem"
    write_signing_key(str(path))
    app_settings.update({"twitcher.signing_key": str(path), "twitcher.site_id": "site-a",
                         "twitcher.revocation_poll_seconds": "0.2"})
    return app_settings


@pytest.fixture
def signing_app(make_app, signing_settings):
    app = make_app()
    yield app
    app.app.registry.federation.revocations.stop()


def generate(app, *params) -> Dict:
    return xmlrpc.client.loads(rpc(app, "generate_token", *params).body)[0][0]


def test_generate_token_mints_signed_tokens_only_when_asked(signing_app):
    opaque = generate(signing_app, 1, {})
    assert not biscuit.looks_signed(opaque["access_token"])
    signed = generate(signing_app, 0.5, {"DATA_USER": "alice"}, "alice",
                      {"signed": True, "services": ["emu"], "operations": ["Execute"]})
    assert biscuit.looks_signed(signed["access_token"])
    assert abs(signed["expires_at"] - (utcnow() + timedelta(hours=0.5)).timestamp()) < 5
    claims = signing_app.app.registry.federation.verify(signed["access_token"], "emu", "execute")
    assert (claims.subject, dict(claims.environ)) == ("alice", {"DATA_USER": "alice"})


@pytest.mark.parametrize("options, message", [
    ({"signed": "yes"}, "options.signed must be a boolean"),
    ({"signed": True, "services": "emu"}, "services must be a list"),
    ({"signed": True, "services": ["Bad Name"]}, "is not a valid name"),
    ({"services": ["emu"]}, "add signed=true"),
    ({"colour": "red"}, "unknown option"),
])
def test_bad_signed_options_are_faults(signing_app, options, message):
    with pytest.raises(xmlrpc.client.Fault, match=message):
        generate(signing_app, 1, {}, "", options)


def test_site_without_a_signing_key_refuses_to_mint(testapp):
    with pytest.raises(xmlrpc.client.Fault, match="cannot sign tokens"):
        generate(testapp, 1, {}, "", {"signed": True})


def test_signed_token_passes_the_tween_without_a_store_query(signing_app, monkeypatch):
    token = generate(signing_app, 1, {}, "", {"signed": True})["access_token"]
    registry = signing_app.app.registry
    monkeypatch.setattr(registry.store, "fetch_token", lambda digest: pytest.fail("store asked"))
    # No service 'emu' is registered: passing the token check, the request stops at the registry.
    answer = signing_app.get("/ows/proxy/emu?service=WPS&request=Execute&version=1.0.0",
                             headers={"Authorization": f"Bearer {token}"}, status=404)
    assert b"service_name" in answer.body


def test_out_of_scope_is_403_and_invalid_is_401_with_the_reason_in_the_log(signing_app, caplog):
    signed = generate(signing_app, 1, {}, "", {"signed": True, "services": ["twitcher:wps"]})["access_token"]
    registry = signing_app.app.registry
    registry.store.save_service(service_from_registration("http://127.0.0.1:9/wps", {"name": "emu"}))
    caplog.set_level("INFO", logger="twitcher.federation.access")
    answer = signing_app.get("/ows/proxy/emu?service=WPS&request=Execute&version=1.0.0",
                             headers={"Access-Token": signed}, status=403)
    assert b"does not allow this request" in answer.body
    assert "WWW-Authenticate" not in answer.headers
    broken = signed[:-8] + ("A" * 8 if not signed.endswith("A" * 8) else "B" * 8)
    answer = signing_app.get("/ows/proxy/emu?service=WPS&request=Execute&version=1.0.0",
                             headers={"Access-Token": broken}, status=401)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    text = caplog.text
    assert "wrong service" in text and ("bad signature" in text or "malformed" in text)
    assert signed not in text and broken not in text


def test_on_an_ogc_api_a_signed_token_is_judged_by_the_ows_operation_the_request_stands_for(signing_app):
    from twitcher.jobs import new_record

    registry = signing_app.app.registry
    # Nothing listens on port 9: a request that passes the checks is forwarded and answered 502.
    registry.store.save_service(service_from_registration("http://127.0.0.1:9/api", {"name": "api", "type": "ogcapi"}))

    def minted(*operations: str) -> Dict[str, str]:
        token = generate(signing_app, 1, {}, "alice", {"signed": True, "operations": list(operations)})["access_token"]
        return {"Authorization": f"Bearer {token}"}

    runner, watcher, anything = minted("execute"), minted("getstatus", "getresult"), minted()
    claims = registry.federation.verify(watcher["Authorization"][7:], "api", "getstatus")
    registry.store.save_job(new_record("api", "job-1", claims, 1))  # alice's job
    execution = "/ows/proxy/api/processes/echo/execution"
    body, json_type = b'{"inputs": {}}', "application/json"
    signing_app.post(execution, body, headers={**runner, "Content-Type": json_type}, status=502)
    signing_app.post(execution, body, headers={**watcher, "Content-Type": json_type}, status=403)
    for path in ("/ows/proxy/api/jobs/job-1", "/ows/proxy/api/jobs/job-1/results"):
        signing_app.get(path, headers=watcher, status=502)
        signing_app.get(path, headers=runner, status=403)
    signing_app.delete("/ows/proxy/api/jobs/job-1", headers=watcher, status=403)  # dismiss: not given
    signing_app.delete("/ows/proxy/api/jobs/job-1", headers=anything, status=502)
    # The job list stands for no operation: tokens narrowed to operations do not pass.
    signing_app.get("/ows/proxy/api/jobs", headers=watcher, status=403)


def test_revoke_token_kills_the_token_and_its_children_not_its_parent(signing_app):
    parent = generate(signing_app, 1, {}, "", {"signed": True})["access_token"]
    child = biscuit.attenuate(parent, services=["emu"])
    grandchild = biscuit.attenuate(child, operations=["execute"])
    federation = signing_app.app.registry.federation
    assert xmlrpc.client.loads(rpc(signing_app, "revoke_token", child).body)[0][0] is True
    assert xmlrpc.client.loads(rpc(signing_app, "revoke_token", child).body)[0][0] is False
    for token in (child, grandchild):
        with pytest.raises(AccessDenied, match="revoked"):
            federation.verify(token, "emu", "execute")
    assert federation.verify(parent, "emu", "execute").issuer == "site-a"
    published = json.loads(signing_app.get("/ows/revoked").body)
    assert published["revoked"] == [federation.inspect(child).revocation_ids[-1]]


def test_revoke_all_tokens_revokes_signed_tokens_minted_here(signing_app):
    token = generate(signing_app, 1, {}, "", {"signed": True})["access_token"]
    rpc(signing_app, "revoke_all_tokens")
    signing_app.app.registry.federation.revocations.refresh_own()
    with pytest.raises(AccessDenied, match="revoked"):
        signing_app.app.registry.federation.verify(token, "emu", "execute")


def test_revoke_reads_the_signed_expiry_and_refuses_expired_tokens(signing_app):
    federation = signing_app.app.registry.federation
    live = generate(signing_app, 2, {}, "", {"signed": True})
    assert int(federation.inspect(live["access_token"]).expires_at.timestamp()) == live["expires_at"]
    expired = biscuit.mint(federation.signing_key, "site-a", utcnow().replace(microsecond=0) - timedelta(seconds=1))
    assert federation.revoke(expired, 720) is False
    assert json.loads(signing_app.get("/ows/revoked").body)["revoked"] == []


def test_revoke_refuses_a_signed_token_from_an_unknown_key(signing_app):
    stranger = biscuit.mint(biscuit.load_signing_key(biscuit.generate_private_key_pem()), "site-a",
                            utcnow() + timedelta(hours=1))
    assert xmlrpc.client.loads(rpc(signing_app, "revoke_token", stranger).body)[0][0] is False
    assert json.loads(signing_app.get("/ows/revoked").body)["revoked"] == []


def test_revoked_list_is_public_json_briefly_cacheable_and_read_only(signing_app):
    answer = signing_app.get("/ows/revoked")
    assert answer.content_type == "application/json"
    assert answer.headers["Cache-Control"] == "public, max-age=10"
    assert json.loads(answer.body)["site_id"] == "site-a"
    signing_app.post("/ows/revoked", status=405)
    # Only that exact path is public: below it, the OWS security tween asks for a token.
    signing_app.get("/ows/revoked/x", status=401)


def test_revoked_list_answers_503_when_the_store_is_down(signing_app, monkeypatch):
    def down():
        raise StoreUnavailable("down")

    monkeypatch.setattr(signing_app.app.registry.store, "revoked_ids", down)
    assert signing_app.get("/ows/revoked", status=503).headers["Cache-Control"] == "no-store"


def test_signed_token_environ_reaches_the_internal_wps_and_scope_applies(make_app, signing_settings, tmp_path):
    signing_settings.update({"twitcher.wps": "true", "twitcher.wps_processes": PROCESSES,
                             "twitcher.wps_workdir": str(tmp_path / "wps")})
    app = make_app()
    try:
        for_wps = generate(app, 1, {"DATA_TOKEN": "signed-abc"}, "", {"signed": True, "services": [INTERNAL_WPS]})
        body = app.get(f"{EXECUTE}environ_probe&DataInputs=key=DATA_TOKEN",
                       headers={"Access-Token": for_wps["access_token"]}).body
        assert json.loads(output_data(body, "value")) == "signed-abc"
        for_emu = generate(app, 1, {"DATA_TOKEN": "x"}, "", {"signed": True, "services": ["emu"]})
        app.get(f"{EXECUTE}environ_probe&DataInputs=key=DATA_TOKEN",
                headers={"Access-Token": for_emu["access_token"]}, status=403)
    finally:
        app.app.registry.federation.revocations.stop()


def test_federation_verify_refuses_when_no_key_is_trusted(testapp):
    token = biscuit.mint(biscuit.load_signing_key(biscuit.generate_private_key_pem()), "site-a",
                         utcnow() + timedelta(hours=1))
    with pytest.raises(AccessDenied) as refused:
        testapp.app.registry.federation.verify(token, "emu", "execute")
    assert not isinstance(refused.value, TokenOutOfScope)


# -- twitcherctl ----------------------------------------------------------------------------


def test_twitcherctl_keygen_prints_the_public_key_of_the_written_file(tmp_path, capsys):
    path = tmp_path / "k.pem"
    assert client.main(["keygen", str(path)]) == 0
    out = capsys.readouterr().out
    public = read_signing_key(str(path)).public_key
    assert f"ed25519/{public}" in out and "BEGIN" not in out
    assert client.main(["keygen", str(path)]) == 1
    assert "never overwritten" in capsys.readouterr().err


def test_twitcherctl_attenuate_works_offline_and_narrows(key_a, capsys):
    parent = biscuit.mint(key_a, "site-a", utcnow() + timedelta(hours=2))
    assert client.main(["-s", "http://127.0.0.1:9", "attenuate", parent, "--service", "emu",
                        "--operation", "Execute", "--hours", "0.5"]) == 0
    child = capsys.readouterr().out.strip()
    keys = keys_of((key_a, "site-a"))
    now = utcnow()
    assert judge(child, keys, "emu", "execute", now=now) is None
    assert judge(child, keys, "emu", "getcapabilities", now=now) == biscuit.WRONG_OPERATION
    assert judge(child, keys, "other", "execute", now=now) == biscuit.WRONG_SERVICE
    assert judge(child, keys, "emu", "execute", now=now + timedelta(minutes=31)) == biscuit.EXPIRED
    assert judge(parent, keys, "emu", "execute", now=now + timedelta(minutes=31)) is None


@pytest.mark.parametrize("argv, message", [
    (["attenuate", "not-a-token", "--service", "emu"], "cannot attenuate"),
    (["attenuate", "x", "--service", "Bad Name"], "not a valid name"),
    (["attenuate", "x", "--hours", "0"], "--hours must be greater than 0"),
])
def test_twitcherctl_attenuate_errors_are_one_line(argv, message, capsys):
    assert client.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
