"""Admin Basic Auth: password hashes, the credential check and its cache, the 401 answer."""
from __future__ import annotations

import base64
import xmlrpc.client

import pytest

from twitcher import main
from twitcher.admin import auth
from twitcher.admin.auth import AdminCredentials, hash_password, parse_password_hash, verify_password
from twitcher.exceptions import ConfigurationError

#: Cheap enough for tests; production hashes use DEFAULT_ITERATIONS.
FAST = auth.MIN_ITERATIONS


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def derivations(monkeypatch):
    """Counts the PBKDF2 derivations (the real function still runs)."""
    calls = []
    real = auth._derive

    def counting(password, salt, iterations):
        calls.append(iterations)
        return real(password, salt, iterations)

    monkeypatch.setattr(auth, "_derive", counting)
    return calls


# -- hash format ----------------------------------------------------------------------------


def test_hash_has_the_documented_format_and_verifies():
    encoded = hash_password("s3cret pass", iterations=FAST)
    scheme, iterations, salt, key = encoded.split("$")
    assert scheme == "pbkdf2_sha256" and int(iterations) == FAST
    assert parse_password_hash(encoded)[0] == FAST
    assert verify_password("s3cret pass", encoded)
    assert not verify_password("s3cret pas", encoded)
    assert not verify_password("", encoded)


def test_default_hash_uses_the_default_iterations():
    assert parse_password_hash(hash_password("x"))[0] == auth.DEFAULT_ITERATIONS


def test_same_password_hashes_differently_each_time():
    assert hash_password("same", iterations=FAST) != hash_password("same", iterations=FAST)


def test_unicode_password_round_trips():
    assert verify_password("pässwörd-✓", hash_password("pässwörd-✓", iterations=FAST))


def test_empty_password_cannot_be_hashed():
    with pytest.raises(ValueError):
        hash_password("")


@pytest.mark.parametrize("bad", [
    "pbkdf2_sha256$$$",
    "pbkdf2_sha256$many$c2FsdHNhbHQ$" + "A" * 43,
    "pbkdf2_sha256$100$c2FsdHNhbHQ$" + "A" * 43,            # too few iterations
    "pbkdf2_sha256$999999999$c2FsdHNhbHQ$" + "A" * 43,      # too many
    "pbkdf2_sha256$20000$c2FsdA$" + "A" * 43,               # salt too short
    "pbkdf2_sha256$20000$c2FsdHNhbHQ$QUJD",                 # key too short
    "pbkdf2_sha256$20000$c2FsdHNhbHQ$" + "A" * 43 + "$x",
])
def test_malformed_hash_is_refused_at_start_up_without_echoing_it(app_settings, bad):
    app_settings["twitcher.password"] = bad
    with pytest.raises(ConfigurationError) as caught:
        main({}, **app_settings)
    assert "twitcher.password" in str(caught.value)
    assert bad not in str(caught.value)


# -- the credential check -------------------------------------------------------------------


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_only_the_admin_pair_passes(hashed):
    password = hash_password("right", iterations=FAST) if hashed else "right"
    credentials = AdminCredentials("admin", password)
    assert credentials.check("admin", "right")
    assert not credentials.check("admin", "wrong")
    assert not credentials.check("root", "right")
    assert not credentials.check("admin", "")
    assert not credentials.check("Admin", "right")
    assert not credentials.check("admin", "right ")


def test_hash_text_itself_is_not_a_password():
    encoded = hash_password("right", iterations=FAST)
    assert not AdminCredentials("admin", encoded).check("admin", encoded)


def test_without_a_configured_password_nobody_is_admin():
    assert not AdminCredentials("admin", "").check("admin", "")


def test_successful_verification_is_remembered_but_failures_always_pay(derivations):
    credentials = AdminCredentials("admin", hash_password("right", iterations=FAST))
    derivations.clear()
    assert credentials.check("admin", "right")
    assert credentials.check("admin", "right")
    assert len(derivations) == 1
    assert not credentials.check("admin", "wrong")
    assert not credentials.check("admin", "wrong")
    assert len(derivations) == 3
    assert credentials.check("admin", "right") and len(derivations) == 3


def test_wrong_user_name_costs_the_same_work_as_a_wrong_password(derivations):
    credentials = AdminCredentials("admin", hash_password("right", iterations=FAST))
    derivations.clear()
    assert not credentials.check("someone", "guess")
    assert len(derivations) == 1


def test_cache_never_holds_the_password_in_clear():
    credentials = AdminCredentials("admin", hash_password("right-horse", iterations=FAST))
    credentials.check("admin", "right-horse")
    assert b"right-horse" not in credentials._verified
    assert len(credentials._verified) == 32


# -- through the application ----------------------------------------------------------------


def test_hashed_password_in_the_settings_is_accepted(make_app, derivations):
    app = make_app(password=hash_password("hashed-secret", iterations=FAST))
    derivations.clear()
    body = xmlrpc.client.dumps((), "list_services")
    for _ in range(3):
        response = app.post("/RPC2", body, headers={"Authorization": basic("admin", "hashed-secret")})
        assert xmlrpc.client.loads(response.body)[0][0] == []
    assert len(derivations) == 1  # the remembered success spares the next two calls
    app.post("/RPC2", body, headers={"Authorization": basic("admin", "hashed-secret!")}, status=401)


def test_one_wrong_request_costs_one_verification_and_one_log_line(make_app, derivations, caplog):
    app = make_app(password=hash_password("hashed-secret", iterations=FAST))
    derivations.clear()
    app.post("/RPC2", xmlrpc.client.dumps((), "nope"), headers={"Authorization": basic("admin", "x")}, status=401)
    assert len(derivations) == 1
    assert len([r for r in caplog.records if "authentication failed" in r.getMessage()]) == 1


def test_challenge_names_basic_and_the_realm(testapp):
    response = testapp.post("/RPC2", xmlrpc.client.dumps((), "list_services"), status=401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="twitcher", charset="UTF-8"'


def test_security_policy_leaves_public_routes_alone(testapp):
    assert testapp.get("/", headers={"Authorization": basic("admin", "wrong")}).json["name"] == "twitcher"
    testapp.get("/health")
