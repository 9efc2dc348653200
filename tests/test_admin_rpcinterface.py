"""The XML-RPC admin API: every method through webtest and through a real ServerProxy."""
from __future__ import annotations

import base64
import io
import logging
import time
import xmlrpc.client
from urllib.parse import urlsplit, urlunsplit

import pytest
import webtest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from twitcher.admin import rpcinterface
from twitcher.exceptions import StoreUnavailable
from twitcher.services import Service
from twitcher.tokens import new_token, token_digest

ADMIN_AUTH = "Basic " + base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
WPS_URL = "http://wps.example.org/wps"

#: One well-formed call per method, used for the authentication matrix.
CALLS = [
    ("generate_token", (1, {"USER_ID": "alice"})),
    ("revoke_token", ("some-token",)),
    ("revoke_all_tokens", ()),
    ("register_service", (WPS_URL, {"name": "intruder"})),
    ("unregister_service", ("emu",)),
    ("get_service_by_name", ("emu",)),
    ("get_service_by_url", (WPS_URL,)),
    ("list_services", ()),
    ("clear_services", ()),
]

#: Bad arguments of the issue, and words the fault's message must contain.
BAD_CALLS = [
    ("generate_token", (-1,), "greater than 0"),
    ("generate_token", (0,), "greater than 0"),
    ("generate_token", (10_000,), "at most 720"),
    ("generate_token", ("soon",), "must be a number"),
    ("generate_token", ("nan",), "greater than 0"),
    ("generate_token", (1, ["A=b"]), "environ must be a struct"),
    ("generate_token", (1, {f"K{i}": "v" for i in range(33)}), "at most 32 entries"),
    ("generate_token", (1, {"KEY": "x" * 5000}), "longer than 4096"),
    ("generate_token", (1, {}, 42), "subject must be a string"),
    ("generate_token", (1, {}, "a" * 300), "longer than 256"),
    ("generate_token", (1, {}, "alice\n"), "printable"),
    ("generate_token", (1, {"PATH_INFO": "/admin"}), "reserved"),
    ("generate_token", (1, {"HTTP_AUTHORIZATION": "x"}), "reserved"),
    ("generate_token", (1, {"wsgi.input": "x"}), "not allowed"),
    ("generate_token", (1, {"KEY": 5}), "must be a string"),
    ("register_service", ("ftp://example.org/wps",), "http or https"),
    ("register_service", ("http:///wps",), "must name a host"),
    ("register_service", ("not a url",), "spaces"),
    ("register_service", ("wps.example.org/wps",), "http or https"),
    ("register_service", ("http://[::1/wps",), "not a valid URL"),
    ("register_service", (WPS_URL, {"name": "Bad Name!"}), "not allowed"),
    ("register_service", (WPS_URL, {"type": "sos"}), "type must be one of"),
    ("register_service", (WPS_URL, {"auth": "password"}), "auth must be one of"),
    ("register_service", (WPS_URL, {"verify": "relative/ca.pem"}), "verify must be"),
    ("register_service", (WPS_URL, {"nmae": "typo"}), "unknown key 'nmae'"),
    ("register_service", (WPS_URL, "emu"), "data must be a struct"),
    ("register_service", (WPS_URL, {}, "no"), "overwrite must be a boolean"),
    ("revoke_token", (42,), "token must be a string"),
    ("get_service_by_name", (["emu"],), "name must be a string"),
]


def rpc(testapp, method, *params, auth=ADMIN_AUTH, status=200, **kwargs):
    """POST one XML-RPC call; return the webtest response."""
    headers = {"Content-Type": "text/xml"}
    if auth is not None:
        headers["Authorization"] = auth
    body = xmlrpc.client.dumps(tuple(params), method)
    return testapp.post("/RPC2", body, headers=headers, status=status, **kwargs)


def result(response):
    """The value of a methodResponse; raises the Fault it carries."""
    return xmlrpc.client.loads(response.body)[0][0]


def fault(response) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(response.body)
    return caught.value


def snapshot(store):
    """Everything an admin call could change, to prove that nothing did."""
    with store._db() as db:
        tokens = db.execute("SELECT digest, revoked FROM tokens ORDER BY digest").fetchall()
    return tokens, store.list_services()


@pytest.fixture
def arranged(store):
    """One active token and one service in the store of ``testapp``; returns the clear token."""
    token, record = new_token(1)
    store.save_token(record)
    store.save_service(Service(name="emu", url=WPS_URL))
    return token


# -- happy paths through webtest -------------------------------------------------------------


def test_generate_token_returns_token_and_epoch_expiry_and_stores_only_its_digest(testapp, store):
    before = int(time.time())
    answer = result(rpc(testapp, "generate_token", 2, {"USER_ID": "alice"}))
    assert set(answer) == {"access_token", "expires_at"}
    assert isinstance(answer["expires_at"], int)
    assert before + 2 * 3600 - 1 <= answer["expires_at"] <= int(time.time()) + 2 * 3600
    record = store.fetch_token(token_digest(answer["access_token"]))
    assert record.environ == {"USER_ID": "alice"} and not record.revoked
    with store._db() as db:
        stored = db.execute("SELECT digest FROM tokens").fetchall()
    assert answer["access_token"] not in str(stored)


def test_generate_token_defaults_to_one_hour_without_environ(testapp, store):
    answer = result(rpc(testapp, "generate_token"))
    assert abs(answer["expires_at"] - (time.time() + 3600)) < 5
    assert store.fetch_token(token_digest(answer["access_token"])).environ == {}


def test_generate_token_accepts_what_old_portals_send(testapp, store):
    answer = result(rpc(testapp, "generate_token", "3", {"esgf_access_token": "abc"}))
    assert abs(answer["expires_at"] - (time.time() + 3 * 3600)) < 5
    assert store.fetch_token(token_digest(answer["access_token"])).environ == {"esgf_access_token": "abc"}


def test_generate_token_stores_the_subject_third_argument(testapp, store):
    answer = result(rpc(testapp, "generate_token", 1, {}, "alice@example.org"))
    assert store.fetch_token(token_digest(answer["access_token"])).subject == "alice@example.org"
    for call in ((1,), (1, {}), (1, {}, "")):  # the 0.3/0.4 calls, and an empty subject: none
        answer = result(rpc(testapp, "generate_token", *call))
        assert store.fetch_token(token_digest(answer["access_token"])).subject is None


def test_tokens_are_distinct_and_long(testapp):
    first, second = (result(rpc(testapp, "generate_token"))["access_token"] for _ in range(2))
    assert first != second
    assert len(base64.urlsafe_b64decode(first + "==")) >= 16


def test_revoke_token_revokes_once(testapp, store, arranged):
    assert result(rpc(testapp, "revoke_token", arranged)) is True
    assert store.fetch_token(token_digest(arranged)).revoked
    assert result(rpc(testapp, "revoke_token", arranged)) is False
    assert result(rpc(testapp, "revoke_token", "never-issued")) is False


def test_revoke_all_tokens_revokes_every_token(testapp, store, arranged):
    other = result(rpc(testapp, "generate_token"))["access_token"]
    assert result(rpc(testapp, "revoke_all_tokens")) is True
    assert store.fetch_token(token_digest(arranged)).revoked
    assert store.fetch_token(token_digest(other)).revoked


def test_register_service_returns_the_full_struct(testapp, store):
    answer = result(rpc(testapp, "register_service", "https://example.org/emu/wps?map=1",
                        {"type": "WPS", "public": True, "purl": "https://public.example.org/emu",
                         "verify": False}))
    assert answer == {"name": "emu", "url": "https://example.org/emu/wps?map=1", "type": "wps", "public": True,
                      "auth": "token", "purl": "https://public.example.org/emu", "verify": False}
    assert store.fetch_by_name("emu").as_struct() == answer


def test_register_service_tolerates_nil_and_legacy_keys_of_old_portals(testapp):
    body = xmlrpc.client.dumps((WPS_URL, {"name": "emu", "purl": None, "c4i": False, "public": "false"}),
                               "register_service", allow_none=True)
    response = testapp.post("/RPC2", body, headers={"Authorization": ADMIN_AUTH, "Content-Type": "text/xml"})
    assert result(response)["purl"] == "" and result(response)["public"] is False


def test_register_service_overwrites_by_default_and_refuses_when_told(testapp, store, arranged):
    replaced = result(rpc(testapp, "register_service", "http://other.example.org/wps", {"name": "emu"}))
    assert store.fetch_by_name("emu").url == replaced["url"] == "http://other.example.org/wps"
    refused = fault(rpc(testapp, "register_service", WPS_URL, {"name": "emu"}, False))
    assert refused.faultCode == rpcinterface.FAULT_SERVICE_EXISTS
    assert "emu" in refused.faultString and "registered already" in refused.faultString
    assert store.fetch_by_name("emu").url == "http://other.example.org/wps"


def test_unregister_service(testapp, store, arranged):
    assert result(rpc(testapp, "unregister_service", "emu")) is True
    assert store.fetch_by_name("emu") is None
    assert result(rpc(testapp, "unregister_service", "emu")) is False


def test_get_service_by_name_and_url_give_the_struct_or_empty(testapp, arranged):
    expected = Service(name="emu", url=WPS_URL).as_struct()
    assert result(rpc(testapp, "get_service_by_name", "emu")) == expected
    assert result(rpc(testapp, "get_service_by_url", WPS_URL)) == expected
    assert result(rpc(testapp, "get_service_by_name", "nobody")) == {}
    assert result(rpc(testapp, "get_service_by_url", "http://nowhere.example.org/wps")) == {}


def test_list_services_is_sorted_by_name(testapp):
    for name in ("zeta", "alpha", "mid"):
        rpc(testapp, "register_service", f"http://{name}.example.org/wps", {"name": name})
    assert [s["name"] for s in result(rpc(testapp, "list_services"))] == ["alpha", "mid", "zeta"]


def test_clear_services_removes_all(testapp, store, arranged):
    assert result(rpc(testapp, "clear_services")) is True
    assert store.list_services() == [] and result(rpc(testapp, "list_services")) == []


# -- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "params", "words"), BAD_CALLS)
def test_bad_argument_gives_a_clear_fault_and_changes_nothing(testapp, store, method, params, words):
    before = snapshot(store)
    response = rpc(testapp, method, *params)
    assert response.status_int == 200 and response.content_type == "text/xml"
    refused = fault(response)
    assert refused.faultCode == rpcinterface.FAULT_INVALID_ARGUMENT
    assert words in refused.faultString and refused.faultString.startswith(method)
    assert snapshot(store) == before


def test_wrong_number_of_arguments_names_the_problem(testapp):
    refused = fault(rpc(testapp, "list_services", "extra"))
    assert refused.faultCode == rpcinterface.FAULT_INVALID_PARAMS
    assert "too many" in refused.faultString
    missing = fault(rpc(testapp, "register_service"))
    assert missing.faultCode == rpcinterface.FAULT_INVALID_PARAMS and "url" in missing.faultString


def test_arguments_never_come_from_the_query_string(testapp, store):
    body = xmlrpc.client.dumps((WPS_URL, {"name": "emu"}), "register_service")
    headers = {"Authorization": ADMIN_AUTH, "Content-Type": "text/xml"}
    testapp.post("/RPC2", body, headers=headers)
    response = testapp.post("/RPC2?overwrite=0", body.replace("emu", "emu"), headers=headers)
    assert result(response)["name"] == "emu"  # overwrite stayed True: the query string was ignored


def test_unknown_method_is_a_fault_for_an_admin(testapp):
    assert fault(rpc(testapp, "drop_database")).faultCode == rpcinterface.FAULT_METHOD_NOT_FOUND


def test_body_that_is_not_xml_rpc_is_a_parse_fault_for_an_admin(testapp):
    response = testapp.post("/RPC2", "<nope", headers={"Authorization": ADMIN_AUTH, "Content-Type": "text/xml"})
    assert fault(response).faultCode == -32700


def test_store_down_is_its_own_fault(testapp, monkeypatch):
    def down(*args, **kwargs):
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(testapp.app.registry.store, "list_services", down)
    refused = fault(rpc(testapp, "list_services"))
    assert refused.faultCode == rpcinterface.FAULT_STORE_UNAVAILABLE
    assert "not available" in refused.faultString and "locked" not in refused.faultString


def test_unexpected_error_is_a_generic_fault_logged_with_traceback(testapp, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /etc/twitcher")

    monkeypatch.setattr(testapp.app.registry.store, "clear_services", broken)
    with caplog.at_level(logging.ERROR, logger="twitcher.admin.rpcinterface"):
        response = rpc(testapp, "clear_services")
    refused = fault(response)
    assert refused.faultCode == rpcinterface.FAULT_INTERNAL_ERROR
    assert b"secret internals" not in response.body and b"Traceback" not in response.body
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


# -- authentication ------------------------------------------------------------------------

WRONG_CREDENTIALS = {
    "anonymous": None,
    "wrong user": "Basic " + base64.b64encode(f"root:{ADMIN_PASSWORD}".encode()).decode(),
    "wrong password": "Basic " + base64.b64encode(f"{ADMIN_USER}:guess".encode()).decode(),
    "empty password": "Basic " + base64.b64encode(f"{ADMIN_USER}:".encode()).decode(),
    "bearer instead of basic": "Bearer " + ADMIN_PASSWORD,
    "garbage": "Basic !!!not-base64",
}


@pytest.mark.parametrize("who", sorted(WRONG_CREDENTIALS))
@pytest.mark.parametrize(("method", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_calls_without_admin_credentials_get_401_and_change_nothing(testapp, store, arranged, who, method, params):
    before = snapshot(store)
    response = rpc(testapp, method, *params, auth=WRONG_CREDENTIALS[who], status=401)
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="twitcher"')
    assert b"methodResponse" not in response.body
    assert snapshot(store) == before


def test_strangers_get_401_even_for_unknown_methods_and_garbage(testapp):
    assert rpc(testapp, "drop_database", auth=None, status=401)
    assert testapp.post("/RPC2", "<nope", status=401).headers["WWW-Authenticate"].startswith("Basic")
    assert testapp.get("/RPC2", status=401)


class WatchedBody(io.RawIOBase):
    """A request body that remembers whether anything read it (errors could hide a raise)."""

    touched = False

    def readable(self):
        return True

    def readinto(self, buffer):
        self.touched = True
        return 0


def test_stranger_body_is_never_read(testapp):
    body = WatchedBody()
    request = webtest.TestRequest.blank("/RPC2", method="POST", content_type="text/xml")
    request.environ["wsgi.input"] = body
    request.environ["CONTENT_LENGTH"] = str(100 * 1024 * 1024)
    response = testapp.do_request(request, status=401)
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert not body.touched


def test_admin_body_over_the_limit_is_413_and_changes_nothing(make_app, store):
    app = make_app(max_request_body=1024)
    body = xmlrpc.client.dumps((WPS_URL, {"name": "big", "purl": "http://x.example.org/" + "a" * 2000}),
                               methodname="register_service")
    app.post("/RPC2", body, headers={"Authorization": ADMIN_AUTH, "Content-Type": "text/xml"}, status=413)
    assert store.list_services() == []


def test_failed_login_is_logged_with_user_name_but_never_the_password(testapp, caplog):
    wrong = "Basic " + base64.b64encode(b"mallory:hunter2-secret").decode()
    with caplog.at_level(logging.DEBUG):
        rpc(testapp, "list_services", auth=wrong, status=401)
        rpc(testapp, "list_services")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "mallory" in text and "authentication failed" in text
    assert "hunter2" not in text and ADMIN_PASSWORD not in text


def test_generated_token_is_never_logged(testapp, caplog):
    with caplog.at_level(logging.DEBUG):
        token = result(rpc(testapp, "generate_token"))["access_token"]
        rpc(testapp, "revoke_token", token)
    assert token not in "\n".join(r.getMessage() for r in caplog.records)


def test_rpc_interface_can_be_switched_off(make_app):
    app = make_app(rpcinterface="false")
    app.post("/RPC2", xmlrpc.client.dumps((), "list_services"), headers={"Authorization": ADMIN_AUTH},
             status=404)


# -- a real XML-RPC client against a live server --------------------------------------------


def proxy_for(base_url, user=ADMIN_USER, password=ADMIN_PASSWORD):
    parts = urlsplit(base_url)
    netloc = f"{user}:{password}@{parts.netloc}" if user is not None else parts.netloc
    return xmlrpc.client.ServerProxy(urlunsplit((parts.scheme, netloc, "/RPC2", "", "")))


def test_server_proxy_drives_every_method(live_twitcher, store):
    server = proxy_for(live_twitcher)
    issued = server.generate_token(1, {"USER_ID": "bob"})
    assert store.fetch_token(token_digest(issued["access_token"])).environ == {"USER_ID": "bob"}
    assert server.revoke_token(issued["access_token"]) is True
    assert server.revoke_all_tokens() is True
    registered = server.register_service(WPS_URL, {"name": "emu", "public": True})
    assert registered["public"] is True and store.fetch_by_name("emu").public
    assert server.get_service_by_name("emu") == registered
    assert server.get_service_by_url(WPS_URL) == registered
    assert server.get_service_by_name("nobody") == {}
    assert server.list_services() == [registered]
    assert server.unregister_service("emu") is True
    server.register_service(WPS_URL, {"name": "emu"})
    assert server.clear_services() is True
    assert store.list_services() == []


@pytest.mark.parametrize(("method", "params", "words"), BAD_CALLS)
def test_server_proxy_gets_fault_for_bad_arguments(live_twitcher, store, method, params, words):
    with pytest.raises(xmlrpc.client.Fault) as caught:
        getattr(proxy_for(live_twitcher), method)(*params)
    assert caught.value.faultCode == rpcinterface.FAULT_INVALID_ARGUMENT and words in caught.value.faultString
    assert store.list_services() == []


def test_server_proxy_gets_fault_for_duplicate_without_overwrite(live_twitcher):
    server = proxy_for(live_twitcher)
    server.register_service(WPS_URL, {"name": "emu"})
    with pytest.raises(xmlrpc.client.Fault) as caught:
        server.register_service("http://other.example.org/wps", {"name": "emu"}, False)
    assert caught.value.faultCode == rpcinterface.FAULT_SERVICE_EXISTS


@pytest.mark.parametrize(("user", "password"), [(None, None), ("root", ADMIN_PASSWORD), (ADMIN_USER, "guess")],
                         ids=["anonymous", "wrong-user", "wrong-password"])
@pytest.mark.parametrize(("method", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_server_proxy_without_credentials_gets_401(live_twitcher, store, arranged, user, password, method, params):
    before = snapshot(store)
    with pytest.raises(xmlrpc.client.ProtocolError) as caught:
        getattr(proxy_for(live_twitcher, user, password), method)(*params)
    assert caught.value.errcode == 401
    headers = {k.lower(): v for k, v in caught.value.headers.items()}
    assert headers["www-authenticate"].startswith('Basic realm="twitcher"')
    assert snapshot(store) == before


# -- arguments nested too deeply ------------------------------------------------------------------

def _nested_call(method: str, before: str, depth: int, kind: str = "array") -> bytes:
    opening, closing = {
        "array": ("<array><data><value>", "</value></data></array>"),
        "struct": ("<struct><member><name>k</name><value>", "</value></member></struct>"),
    }[kind]
    return (f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>{before}"
            f"<param><value>{opening * depth}<string>x</string>{closing * depth}</value></param>"
            "</params></methodCall>").encode()


@pytest.mark.parametrize(("method", "before", "kind", "argument"), [
    ("register_service", f"<param><value><string>{WPS_URL}</string></value></param>", "array", "data"),
    ("generate_token", "<param><value><int>1</int></value></param>", "struct", "environ"),
    ("revoke_token", "", "array", "token"),
])
def test_deeply_nested_arguments_get_a_fault_naming_the_argument_without_parsing(testapp, store, method, before,
                                                                                 kind, argument):
    import tracemalloc

    body = _nested_call(method, before, 100_000, kind)
    before_state = snapshot(store)
    tracemalloc.start()
    try:
        started = time.monotonic()
        answer = testapp.post("/RPC2", body, headers={"Content-Type": "text/xml", "Authorization": ADMIN_AUTH})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refused = fault(answer)
    assert refused.faultCode == rpcinterface.FAULT_INVALID_ARGUMENT
    assert f"{method}: argument {argument} nests" in refused.faultString
    # Parsing it would have built 100000 nested containers (about 150 MB); the scan keeps nothing.
    assert peak < 4 * len(body) + (8 << 20)
    assert elapsed < 5
    assert snapshot(store) == before_state


def test_nesting_within_the_bound_is_parsed_as_usual(testapp):
    answer = testapp.post("/RPC2", _nested_call("revoke_token", "", rpcinterface.MAX_ARGUMENT_DEPTH),
                          headers={"Content-Type": "text/xml", "Authorization": ADMIN_AUTH})
    assert "token must be a string" in fault(answer).faultString


def test_an_xml_rpc_body_with_a_doctype_is_refused(testapp):
    body = (b"<?xml version='1.0'?><!DOCTYPE m [<!ENTITY a '<array><data><value>x</value></data></array>'>]>"
            b"<methodCall><methodName>revoke_token</methodName><params><param><value>&a;</value></param>"
            b"</params></methodCall>")
    answer = testapp.post("/RPC2", body, headers={"Content-Type": "text/xml", "Authorization": ADMIN_AUTH})
    assert fault(answer).faultCode == rpcinterface.FAULT_NOT_WELL_FORMED


def test_strangers_get_401_before_their_nesting_is_looked_at(testapp):
    answer = testapp.post("/RPC2", _nested_call("list_services", "", 1000), headers={"Content-Type": "text/xml"},
                          status=401)
    assert "WWW-Authenticate" in answer.headers
