"""Tests of the OWS security tween: what reaches the handler, and what never does."""
from __future__ import annotations

import io
from datetime import timedelta

import pytest
import webtest
from lxml import etree
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from twitcher.exceptions import InvalidParameterValue, MalformedRequest, RequestTooLarge, StoreUnavailable
from twitcher.ows.exceptions import OWS_NS
from twitcher.services import Service
from twitcher.tokens import AccessToken, new_token, token_digest, utcnow
from twitcher.tweens import OTHER, PROXY, WPS, Target, extract_token, read_body, resolve_target

EXECUTE = "service=WPS&request=Execute&version=1.0.0&identifier=hello&DataInputs=a=1;b=2"
GETCAPS = "service=WPS&request=GetCapabilities"


class Recorder:
    """The handler behind the tween: remembers exactly what reached it."""

    def __init__(self):
        self.calls = []

    def __call__(self, request):
        self.calls.append({"environ": dict(request.environ), "body": request.body,
                           "query": request.environ.get("QUERY_STRING", "")})
        return Response("handled", content_type="text/plain")

    @property
    def last(self) -> dict:
        return self.calls[-1]


@pytest.fixture
def recorder():
    return Recorder()


def build_guarded_app(settings: dict, handler) -> webtest.TestApp:
    """A Pyramid app with only settings, store, error views and the tween, plus ``handler`` as the
    view of the proxy and internal WPS routes (and of one route outside the prefix), with
    services ``emu`` (wps), ``maps`` (wms), ``open`` (public) and ``certified`` (auth cert)."""
    with Configurator(settings=settings) as config:
        config.include("twitcher.settings")
        config.include("twitcher.store")
        config.include("twitcher.ows.exceptions")
        config.include("twitcher.tweens")
        prefix = config.registry.twitcher.protected_path
        config.add_route("proxy", prefix + "/proxy/{service_name}")
        config.add_route("proxy_extra", prefix + "/proxy/{service_name}/{extra_path:.*}")
        config.add_route("wps", prefix + "/wps")
        config.add_route("wps_extra", prefix + "/wps/{extra:.*}")
        config.add_route("outside", "/owsfoo/proxy/{service_name}")
        for route in ("proxy", "proxy_extra", "wps", "wps_extra", "outside"):
            config.add_view(handler, route_name=route, request_method=("GET", "HEAD", "POST"))
        app = config.make_wsgi_app()
    store = app.registry.store
    store.save_service(Service(name="emu", url="http://backend.invalid/wps"))
    store.save_service(Service(name="maps", url="http://backend.invalid/wms", type="wms"))
    store.save_service(Service(name="open", url="http://backend.invalid/open", public=True))
    store.save_service(Service(name="certified", url="http://backend.invalid/cert", auth="cert"))
    return webtest.TestApp(app)


@pytest.fixture
def guarded(app_settings, recorder):
    """``build(**settings)``: the app of :func:`build_guarded_app` recording into ``recorder``."""
    def build(**overrides) -> webtest.TestApp:
        settings = dict(app_settings)
        settings.update({f"twitcher.{k}": str(v) for k, v in overrides.items()})
        return build_guarded_app(settings, recorder)

    return build


@pytest.fixture
def app(guarded):
    return guarded()


@pytest.fixture
def token(app) -> str:
    """A valid token in the app's store, carrying environ data for the internal WPS."""
    clear, record = new_token(1, environ={"DATA_USER": "alice"})
    app.app.registry.store.save_token(record)
    return clear


def assert_report(response, status: int, code: str, locator=None) -> etree._Element:
    assert response.status_int == status
    assert response.content_type == "text/xml"
    root = etree.fromstring(response.body)
    assert root.tag == f"{{{OWS_NS}}}ExceptionReport"
    exception = root.find(f"{{{OWS_NS}}}Exception")
    assert exception.get("exceptionCode") == code
    assert exception.get("locator") == locator
    return exception


def text_of(exception) -> str:
    return exception.findtext(f"{{{OWS_NS}}}ExceptionText")


# -- target resolution ------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("/ows/proxy/emu", Target(PROXY, "emu")),
    ("/ows/proxy/emu/", Target(PROXY, "emu", extra=True)),
    ("/ows/proxy/emu/outputs/a.nc", Target(PROXY, "emu", extra=True)),
    ("/ows/wps", Target(WPS)),
    ("/ows/wps/status/1.xml", Target(WPS, extra=True)),
    ("/ows", Target(OTHER)),
    ("/ows/", Target(OTHER)),
    ("/ows/proxy", Target(OTHER)),
    ("/ows/proxy/", Target(OTHER)),
    ("/ows/proxy//emu", Target(OTHER)),
    ("/ows/wpsx", Target(OTHER)),
    ("/ows/anything", Target(OTHER)),
    ("/owsfoo/proxy/emu", None),
    ("/health", None),
    ("/", None),
])
def test_targets_follow_the_routes_by_whole_segment(path, expected):
    assert resolve_target(path, "/ows") == expected


# -- token extraction (pure) ---------------------------------------------------------------

class FakeRequest:
    def __init__(self, query_string="", **headers):
        self.environ = {"QUERY_STRING": query_string, **headers}


@pytest.mark.parametrize("query, headers, expected", [
    ("", {}, None),
    ("access_token=abc", {}, "abc"),
    ("token=abc", {}, "abc"),
    ("ACCESS_TOKEN=abc", {}, "abc"),
    ("Token=abc", {}, "abc"),
    ("access%5Ftoken=a%2Db", {}, "a-b"),
    ("", {"HTTP_ACCESS_TOKEN": "abc"}, "abc"),
    ("", {"HTTP_AUTHORIZATION": "Bearer abc"}, "abc"),
    ("", {"HTTP_AUTHORIZATION": "bearer   abc "}, "abc"),
    ("", {"HTTP_AUTHORIZATION": "Basic YWRtaW46eA=="}, None),
    ("", {"HTTP_AUTHORIZATION": "Bearer"}, None),
    ("access_token=", {}, None),
    ("access_token=abc&token=abc", {"HTTP_ACCESS_TOKEN": "abc", "HTTP_AUTHORIZATION": "Bearer abc"}, "abc"),
    ("access_token=&token=abc", {}, "abc"),
])
def test_extract_token_reads_every_source(query, headers, expected):
    assert extract_token(FakeRequest(query, **headers)) == expected


@pytest.mark.parametrize("query, headers", [
    ("access_token=abc&token=xyz", {}),
    ("access_token=abc&ACCESS_TOKEN=xyz", {}),
    ("access_token=abc", {"HTTP_ACCESS_TOKEN": "xyz"}),
    ("", {"HTTP_ACCESS_TOKEN": "abc", "HTTP_AUTHORIZATION": "Bearer xyz"}),
    ("token=abc", {"HTTP_AUTHORIZATION": "Bearer xyz"}),
])
def test_different_tokens_in_one_request_are_refused(query, headers):
    with pytest.raises(InvalidParameterValue) as info:
        extract_token(FakeRequest(query, **headers))
    assert info.value.locator == "access_token"


# -- body reading -------------------------------------------------------------------------

class EndlessZeros(io.RawIOBase):
    """A request body that never ends; counts what was read from it."""

    def __init__(self):
        self.consumed = 0

    def readable(self):
        return True

    def read(self, size=-1):
        size = 65536 if size is None or size < 0 else size
        self.consumed += size
        return b"0" * size


def blank_request(**environ):
    from pyramid.request import Request

    return Request.blank("/ows/proxy/emu", environ={"REQUEST_METHOD": "POST", **environ})


def test_declared_body_over_the_limit_is_refused_before_reading():
    stream = EndlessZeros()
    request = blank_request(CONTENT_LENGTH=str(50 * 1024 * 1024))
    request.environ["wsgi.input"] = stream
    with pytest.raises(RequestTooLarge):
        read_body(request, 1024)
    assert stream.consumed == 0


def test_chunked_body_is_read_only_up_to_the_limit_plus_one():
    stream = EndlessZeros()
    request = blank_request(HTTP_TRANSFER_ENCODING="chunked")
    request.environ.pop("CONTENT_LENGTH", None)
    request.environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    with pytest.raises(RequestTooLarge):
        read_body(request, 10 * 1024 * 1024)
    assert stream.consumed <= 10 * 1024 * 1024 + 65536


def test_chunked_body_under_the_limit_stays_readable_for_the_handler():
    request = blank_request(HTTP_TRANSFER_ENCODING="chunked")
    request.environ.pop("CONTENT_LENGTH", None)
    request.environ.update({"wsgi.input": io.BytesIO(b"<a/>"), "wsgi.input_terminated": True})
    assert read_body(request, 100) == b"<a/>"
    assert request.body == b"<a/>"
    assert request.environ["CONTENT_LENGTH"] == "4"
    assert "HTTP_TRANSFER_ENCODING" not in request.environ


def test_chunked_body_without_a_terminated_input_is_refused():
    request = blank_request(HTTP_TRANSFER_ENCODING="chunked")
    request.environ.pop("CONTENT_LENGTH", None)
    with pytest.raises(MalformedRequest) as info:
        read_body(request, 100)
    assert info.value.status == 411


@pytest.mark.parametrize("length", ["abc", "-1"])
def test_a_nonsense_content_length_is_refused(length):
    with pytest.raises(MalformedRequest):
        read_body(blank_request(CONTENT_LENGTH=length), 100)


# -- the tween in a Pyramid app -------------------------------------------------------------

def test_tween_sits_under_the_exception_view_tween(app):
    from pyramid.interfaces import ITweens

    names = [name for name, _ in app.app.registry.queryUtility(ITweens).implicit()]
    assert names.index(EXCVIEW) < names.index("twitcher.tweens.ows_security_tween_factory")


@pytest.mark.parametrize("query", [GETCAPS, "service=WPS&request=DescribeProcess&identifier=all&version=1.0.0",
                                   "SERVICE=wps&REQUEST=getcapabilities"])
def test_public_wps_requests_pass_without_a_token(app, recorder, query):
    assert app.get(f"/ows/proxy/emu?{query}").text == "handled"
    assert recorder.last["query"] == query


def test_wms_getcapabilities_is_public(app, recorder):
    app.get("/ows/proxy/maps?service=WMS&request=GetCapabilities&version=1.3.0")
    assert len(recorder.calls) == 1


def test_wms_getmap_needs_a_token(app, recorder):
    response = app.get("/ows/proxy/maps?service=WMS&request=GetMap&layers=a", status=401)
    assert "required" in text_of(assert_report(response, 401, "NoApplicableCode", "access_token"))
    assert not recorder.calls


def test_public_requests_are_configurable(guarded, recorder):
    app = guarded(public_requests="wps:getcapabilities")
    app.get(f"/ows/proxy/emu?{GETCAPS}")
    app.get("/ows/proxy/emu?service=WPS&request=DescribeProcess&identifier=all", status=401)
    assert len(recorder.calls) == 1


def test_execute_without_a_token_is_refused_and_never_handled(app, recorder):
    response = app.get(f"/ows/proxy/emu?{EXECUTE}", status=401)
    exception = assert_report(response, 401, "NoApplicableCode", "access_token")
    assert "required" in text_of(exception)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not recorder.calls


def carrying(token: str, source: str, query: str, first: bool = False):
    """The query string and headers of a request whose token comes from ``source``: a header
    (``header``, ``bearer``) or the query parameter of that name, put first or last."""
    if source == "header":
        return query, {"Access-Token": token}
    if source == "bearer":
        return query, {"Authorization": f"Bearer {token}"}
    return (f"{source}={token}&{query}" if first else f"{query}&{source}={token}"), {}


@pytest.mark.parametrize("source", ["access_token", "token", "ACCESS_TOKEN", "header", "bearer"])
def test_execute_with_a_valid_token_from_each_source_passes_without_it(app, recorder, token, source):
    query, headers = carrying(token, source, EXECUTE, first=True)
    app.get(f"/ows/proxy/emu?{query}", headers=headers)
    seen = recorder.last
    assert seen["query"] == EXECUTE
    assert "HTTP_ACCESS_TOKEN" not in seen["environ"]
    assert "HTTP_AUTHORIZATION" not in seen["environ"]
    assert token not in repr(seen["environ"])
    assert "DATA_USER" not in seen["environ"]  # the proxy never gets the token's environ


def test_token_in_the_middle_of_the_query_leaves_every_other_byte(app, recorder, token):
    app.get(f"/ows/proxy/emu?service=WPS&request=Execute&token={token}&DataInputs=a%3D1;b=2&x=%20")
    assert recorder.last["query"] == "service=WPS&request=Execute&DataInputs=a%3D1;b=2&x=%20"


def test_basic_authorization_is_not_a_token_and_is_left_alone(app, recorder):
    app.get(f"/ows/proxy/emu?{GETCAPS}", headers={"Authorization": "Basic YTpi"})
    assert recorder.last["environ"]["HTTP_AUTHORIZATION"] == "Basic YTpi"
    app.get(f"/ows/proxy/emu?{EXECUTE}", headers={"Authorization": "Basic YTpi"}, status=401)
    assert len(recorder.calls) == 1


def test_token_is_stripped_from_public_requests_too(app, recorder):
    app.get(f"/ows/proxy/emu?{GETCAPS}&access_token=whatever",
            headers={"Access-Token": "whatever", "Authorization": "Bearer whatever"})
    seen = recorder.last
    assert seen["query"] == GETCAPS
    assert "whatever" not in repr(seen["environ"])


@pytest.mark.parametrize("state, text", [("unknown", "unknown"), ("revoked", "revoked"), ("expired", "expired")])
def test_unusable_tokens_are_refused_with_the_reason(app, recorder, state, text):
    store = app.app.registry.store
    clear, record = new_token(1)
    if state == "revoked":
        store.save_token(record)
        store.revoke_token(record.digest)
    elif state == "expired":
        store.save_token(AccessToken(digest=record.digest, expires_at=utcnow() - timedelta(seconds=1)))
    response = app.get(f"/ows/proxy/emu?{EXECUTE}&access_token={clear}", status=401)
    assert text in text_of(assert_report(response, 401, "NoApplicableCode", "access_token"))
    assert not recorder.calls


def test_conflicting_tokens_are_a_bad_request_even_when_one_is_valid(app, recorder, token):
    response = app.get(f"/ows/proxy/emu?{EXECUTE}&access_token={token}", headers={"Access-Token": "other"},
                       status=400)
    assert_report(response, 400, "InvalidParameterValue", "access_token")
    assert not recorder.calls


def test_public_service_needs_no_token_for_anything(app, recorder):
    app.get(f"/ows/proxy/open?{EXECUTE}")
    app.get("/ows/proxy/open/outputs/result.nc")
    assert len(recorder.calls) == 2


@pytest.mark.parametrize("path", ["/ows/proxy/emu/outputs/result.nc", "/ows/proxy/emu/",
                                  f"/ows/proxy/emu/x?{GETCAPS}", "/ows/wps/status/1.xml"])
def test_paths_below_a_service_need_a_token(app, recorder, token, path):
    assert_report(app.get(path, status=401), 401, "NoApplicableCode", "access_token")
    assert not recorder.calls
    joiner = "&" if "?" in path else "?"
    app.get(f"{path}{joiner}access_token={token}")
    assert len(recorder.calls) == 1


def test_unknown_service_is_404_invalid_parameter(app, recorder):
    assert_report(app.get(f"/ows/proxy/nosuch?{GETCAPS}", status=404), 404, "InvalidParameterValue", "service_name")
    assert_report(app.get(f"/ows/proxy/BAD%20NAME?{GETCAPS}", status=404), 404, "InvalidParameterValue",
                  "service_name")
    assert not recorder.calls


@pytest.mark.parametrize("query, status, code, locator", [
    ("request=GetCapabilities", 400, "MissingParameterValue", "service"),
    ("service=WPS", 400, "MissingParameterValue", "request"),
    ("service=WPS&request=", 400, "MissingParameterValue", "request"),
    ("service=WMS&request=GetCapabilities", 400, "InvalidParameterValue", "service"),
    ("service=XYZ&request=GetCapabilities", 400, "InvalidParameterValue", "service"),
    ("service=WPS&request=Execute&request=GetCapabilities", 400, "InvalidParameterValue", "request"),
    ("service=WPS&request=Execute&REQUEST=GetCapabilities", 400, "InvalidParameterValue", "request"),
    ("service=WPS&request=Execute&ReQuEsT=GetCapabilities", 400, "InvalidParameterValue", "request"),
    ("service=WPS&Service=WPS&request=GetCapabilities", 400, "InvalidParameterValue", "service"),
    ("service=WPS&request=GetCapabilities&version=1.0.0&VERSION=2.0.0", 400, "InvalidParameterValue", "version"),
    ("service=WPS&request=Launch", 400, "OperationNotSupported", "Launch"),
])
def test_bad_requests_are_400_even_with_a_valid_token(app, recorder, token, query, status, code, locator):
    for suffix in ("", f"&access_token={token}"):
        assert_report(app.get(f"/ows/proxy/emu?{query}{suffix}", status=status), status, code, locator)
    assert not recorder.calls


def test_repeated_keys_are_refused_below_a_service_too(app, recorder, token):
    response = app.get(f"/ows/proxy/emu/x?request=a&Request=b&access_token={token}", status=400)
    assert_report(response, 400, "InvalidParameterValue", "request")
    assert not recorder.calls


def test_unsupported_method_is_405(app, recorder, token):
    response = app.request(f"/ows/proxy/emu?{GETCAPS}&access_token={token}", method="PUT", status=405)
    assert_report(response, 405, "OperationNotSupported", "PUT")
    assert not recorder.calls


def xml(name: str) -> bytes:
    from pathlib import Path

    return (Path(__file__).parent / "corpus" / name).read_bytes()


def test_post_public_request_passes_with_its_body(app, recorder):
    body = xml("wps100_getcapabilities.xml")
    app.post("/ows/proxy/emu", body, content_type="text/xml")
    assert recorder.last["body"] == body


@pytest.mark.parametrize("name", ["wps100_execute.xml", "wps200_execute.xml"])
def test_post_execute_needs_a_token_and_keeps_its_body(app, recorder, token, name):
    body = xml(name)
    app.post("/ows/proxy/emu", body, content_type="text/xml", status=401)
    assert not recorder.calls
    app.post("/ows/proxy/emu", body, content_type="text/xml", headers={"Authorization": f"Bearer {token}"})
    assert recorder.last["body"] == body
    assert "HTTP_AUTHORIZATION" not in recorder.last["environ"]


STATUS_JOB = "336ad1f2-4a7f-4d8a-9b3c-5a1b0f8e7c21"  # the JobID of corpus/wps200_getstatus.xml


def test_wps2_getstatus_answers_only_the_jobs_owner_and_keeps_its_body(app, recorder):
    from twitcher.jobs import new_record

    store = app.app.registry.store
    tokens = {}
    for who in ("alice", "alice2", "bob"):
        tokens[who], record = new_token(1, subject=who.rstrip("2"))
        store.save_token(record)
        if who == "alice":
            owner = record
    body = xml("wps200_getstatus.xml")
    # No record of the job: refused to everyone (fail closed), nothing forwarded.
    app.post("/ows/proxy/emu", body, content_type="text/xml", headers={"Access-Token": tokens["alice"]}, status=403)
    store.save_job(new_record("emu", STATUS_JOB, owner, 1))
    app.post("/ows/proxy/emu", body, content_type="text/xml", headers={"Access-Token": tokens["alice2"]})
    assert recorder.last["body"] == body
    calls = len(recorder.calls)
    response = app.post("/ows/proxy/emu", body, content_type="text/xml", headers={"Access-Token": tokens["bob"]},
                        status=403)
    assert_report(response, 403, "NoApplicableCode", "jobId")
    app.get(f"/ows/proxy/emu?service=WPS&version=2.0.0&request=GetResult&jobid={STATUS_JOB}",
            headers={"Access-Token": tokens["bob"]}, status=403)
    app.get(f"/ows/proxy/emu?service=WPS&version=2.0.0&request=Dismiss&JobID={STATUS_JOB}",
            headers={"Access-Token": tokens["alice2"]})
    assert len(recorder.calls) == calls + 1
    # Two different JobIDs: which would the backend read? Refused.
    app.get(f"/ows/proxy/emu?service=WPS&version=2.0.0&request=GetStatus&jobid={STATUS_JOB}&JOBID=x",
            headers={"Access-Token": tokens["alice"]}, status=400)
    app.get("/ows/proxy/emu?service=WPS&version=2.0.0&request=GetStatus", headers={"Access-Token": tokens["alice"]},
            status=400)


@pytest.mark.parametrize("name", ["xxe_file.xml", "xxe_network.xml", "billion_laughs.xml", "doctype_plain.xml",
                                  "two_roots.xml"])
def test_hostile_bodies_are_malformed_requests(app, recorder, token, name):
    response = app.post(f"/ows/proxy/emu?access_token={token}", xml(name), content_type="text/xml", status=400)
    assert_report(response, 400, "NoApplicableCode")
    assert not recorder.calls


def test_post_whose_query_contradicts_the_body_is_refused(app, recorder):
    response = app.post(f"/ows/proxy/emu?{GETCAPS}", xml("wps100_execute.xml"), content_type="text/xml", status=400)
    assert_report(response, 400, "InvalidParameterValue", "request")
    assert not recorder.calls


def test_body_over_the_limit_is_413(guarded, recorder):
    app = guarded(max_request_body=1000)
    body = xml("wps100_getcapabilities.xml").replace(b"</wps:GetCapabilities>", b" " * 2000 + b"</wps:GetCapabilities>")
    assert_report(app.post("/ows/proxy/emu", body, content_type="text/xml", status=413), 413, "NoApplicableCode")
    assert_report(app.post("/ows/proxy/emu/extra", body, content_type="text/xml", status=413), 413,
                  "NoApplicableCode")
    assert not recorder.calls


def test_store_down_is_503_and_nothing_is_handled(app, recorder, token, monkeypatch):
    store = app.app.registry.store

    def down(*args):
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "fetch_by_name", down)
    assert_report(app.get(f"/ows/proxy/emu?{GETCAPS}", status=503), 503, "NoApplicableCode")
    monkeypatch.undo()
    monkeypatch.setattr(store, "fetch_token", down)
    assert_report(app.get(f"/ows/proxy/emu?{EXECUTE}&access_token={token}", status=503), 503, "NoApplicableCode")
    assert_report(app.get(f"/ows/wps?{EXECUTE}&access_token={token}", status=503), 503, "NoApplicableCode")
    assert not recorder.calls


def test_internal_wps_gets_the_token_environ(app, recorder, token):
    app.get(f"/ows/wps?{EXECUTE}", headers={"Access-Token": token})
    seen = recorder.last["environ"]
    assert seen["DATA_USER"] == "alice"
    assert "HTTP_ACCESS_TOKEN" not in seen


def test_internal_wps_public_requests_pass_and_others_need_a_token(app, recorder):
    app.get(f"/ows/wps?{GETCAPS}")
    app.get(f"/ows/wps?{EXECUTE}", status=401)
    assert len(recorder.calls) == 1
    assert_report(app.get("/ows/wps?service=WMS&request=GetCapabilities", status=400), 400,
                  "InvalidParameterValue", "service")


def test_token_environ_that_is_not_allowed_never_reaches_the_environ(app, recorder):
    clear, record = new_token(1)
    app.app.registry.store.save_token(AccessToken(digest=record.digest, expires_at=record.expires_at,
                                                  environ={"PATH_INFO": "/evil"}))
    response = app.get(f"/ows/wps?{EXECUTE}&access_token={clear}", status=500)
    assert_report(response, 500, "NoApplicableCode")
    assert not recorder.calls


@pytest.mark.parametrize("path", ["/ows", "/ows/", "/ows/other", "/ows/proxy", "/ows/wpsx?service=WPS"])
def test_other_paths_under_the_prefix_need_a_token_then_404(app, recorder, token, path):
    assert_report(app.get(path, status=401), 401, "NoApplicableCode", "access_token")
    joiner = "&" if "?" in path else "?"
    response = app.get(f"{path}{joiner}access_token={token}", status=404)
    assert_report(response, 404, "NoApplicableCode", "path")
    assert not recorder.calls


def test_a_path_that_only_starts_with_the_prefix_is_not_guarded(app, recorder):
    app.get(f"/owsfoo/proxy/emu?{EXECUTE}")
    assert recorder.last["query"] == EXECUTE


def test_the_protected_path_is_configurable(guarded, recorder):
    app = guarded(protected_path="/secure/ows")
    app.get(f"/ows/proxy/emu?{EXECUTE}", status=404)
    app.get(f"/secure/ows/proxy/emu?{EXECUTE}", status=401)
    app.get(f"/secure/ows/proxy/emu?{GETCAPS}")
    assert len(recorder.calls) == 1


@pytest.mark.parametrize("trusted, verify, expected", [
    (True, "SUCCESS", 200), (True, "FAILED:unable to verify", 401), (True, None, 401),
    (False, "SUCCESS", 401),
])
def test_cert_services_accept_a_verified_client_certificate_only_when_trusted(guarded, recorder, trusted, verify,
                                                                              expected):
    app = guarded(trust_forwarded_cert_header=str(trusted).lower())
    headers = {"X-Ssl-Client-Verify": verify, "X-Ssl-Client-Dn": "CN=alice"} if verify else {}
    app.get(f"/ows/proxy/certified?{EXECUTE}", headers=headers, status=expected)
    assert len(recorder.calls) == (1 if expected == 200 else 0)


def test_cert_header_does_not_open_a_token_service(guarded, recorder):
    app = guarded(trust_forwarded_cert_header="true")
    app.get(f"/ows/proxy/emu?{EXECUTE}", headers={"X-Ssl-Client-Verify": "SUCCESS"}, status=401)
    assert not recorder.calls


def test_untrusted_cert_headers_are_stripped_before_the_handler(app, recorder):
    app.get(f"/ows/proxy/emu?{GETCAPS}", headers={"X-Ssl-Client-Verify": "SUCCESS", "X-Ssl-Client-Dn": "CN=x"})
    assert not [k for k in recorder.last["environ"] if k.startswith("HTTP_X_SSL_")]


def test_cert_service_still_accepts_a_token(app, recorder, token):
    app.get(f"/ows/proxy/certified?{EXECUTE}&access_token={token}")
    assert len(recorder.calls) == 1


# -- through the real application and a real backend ------------------------------------------

class Backend:
    """A WSGI backend that records what reached it and answers a small XML document."""

    def __init__(self):
        self.seen = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if not environ["PATH_INFO"].startswith("/svc/"):  # serve_wsgi polls "/" until the server is up
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b""]
        self.seen.append({"query": environ.get("QUERY_STRING", ""), "body": body,
                          "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")}})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"backend answered"]


@pytest.fixture(scope="module")
def backend_server():
    """One backend for the module: stopping a waitress server takes seconds."""
    from tests.servers import serve_wsgi

    recorder = Backend()
    with serve_wsgi(recorder, threads=2) as base_url:
        yield recorder, base_url


@pytest.fixture
def backend(backend_server):
    """The module's backend with an empty record."""
    backend_server[0].seen.clear()
    return backend_server


@pytest.fixture
def proxied(make_app, store, backend):
    """The real ``main()`` with the proxy in front of ``backend``, registered as ``emu``; a valid token."""
    recorder, base_url = backend
    store.save_service(Service(name="emu", url=base_url + "/svc/wps"))
    clear, record = new_token(1)
    store.save_token(record)
    return make_app(max_request_body=10000), recorder, clear


def test_real_app_forwards_public_requests_without_token_material(proxied):
    app, backend, token = proxied
    response = app.get(f"/ows/proxy/emu?{GETCAPS}&access_token=junk", headers={"Access-Token": "junk"})
    assert response.text == "backend answered"
    assert backend.seen[-1]["query"] == GETCAPS
    assert "HTTP_ACCESS_TOKEN" not in backend.seen[-1]["headers"]


def test_real_app_looks_the_service_up_once_per_proxied_request(proxied, monkeypatch):
    app, backend, token = proxied
    store = app.app.registry.store
    looked_up = []
    fetch_by_name = store.fetch_by_name
    monkeypatch.setattr(store, "fetch_by_name", lambda name: looked_up.append(name) or fetch_by_name(name))
    app.get(f"/ows/proxy/emu?{EXECUTE}&access_token={token}")
    assert looked_up == ["emu"]
    assert len(backend.seen) == 1


@pytest.mark.parametrize("source", ["access_token", "token", "header", "bearer"])
def test_real_app_forwards_execute_with_a_token_from_each_source_and_never_the_token(proxied, source):
    app, backend, token = proxied
    query, headers = carrying(token, source, EXECUTE)
    assert app.get(f"/ows/proxy/emu?{query}", headers=headers).text == "backend answered"
    assert backend.seen[-1]["query"] == EXECUTE
    assert token not in repr(backend.seen[-1])


def test_real_app_forwards_a_post_execute_body_unchanged(proxied):
    app, backend, token = proxied
    body = xml("wps200_execute.xml")
    app.post("/ows/proxy/emu", body, content_type="text/xml", headers={"Authorization": f"Bearer {token}"})
    assert backend.seen[-1]["body"] == body


@pytest.mark.parametrize("method, path, body, status, code, locator", [
    ("GET", "/ows/proxy/emu?request=GetCapabilities", None, 400, "MissingParameterValue", "service"),
    ("GET", "/ows/proxy/emu?service=WPS", None, 400, "MissingParameterValue", "request"),
    ("GET", "/ows/proxy/emu?service=WPS&request=Execute&Request=GetCapabilities", None, 400,
     "InvalidParameterValue", "request"),
    ("GET", "/ows/proxy/emu?service=WFS&request=GetCapabilities", None, 400, "InvalidParameterValue", "service"),
    ("GET", "/ows/proxy/emu?service=WPS&request=Launch", None, 400, "OperationNotSupported", "Launch"),
    ("DELETE", f"/ows/proxy/emu?{GETCAPS}", None, 405, "OperationNotSupported", "DELETE"),
    ("POST", "/ows/proxy/emu", b"<wps:Execute", 400, "NoApplicableCode", None),
    ("POST", "/ows/proxy/emu", "billion_laughs.xml", 400, "NoApplicableCode", None),
    ("POST", "/ows/proxy/emu", b"<a/>" + b" " * 20000, 413, "NoApplicableCode", None),
    ("GET", f"/ows/proxy/emu?{EXECUTE}", None, 401, "NoApplicableCode", "access_token"),
    ("GET", f"/ows/proxy/emu?{EXECUTE}&access_token=unknown", None, 401, "NoApplicableCode", "access_token"),
    ("GET", "/ows/proxy/emu/outputs/a.nc", None, 401, "NoApplicableCode", "access_token"),
    ("GET", f"/ows/proxy/nosuch?{GETCAPS}", None, 404, "InvalidParameterValue", "service_name"),
])
def test_real_app_answers_each_error_row_with_a_report_and_never_calls_the_backend(
        proxied, method, path, body, status, code, locator):
    app, backend, _ = proxied
    if isinstance(body, str):
        body = xml(body)
    response = app.request(path, method=method, body=body, status=status,
                           headers={"Content-Type": "text/xml"} if body else {})
    assert_report(response, status, code, locator)
    assert not backend.seen


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_real_app_refuses_revoked_and_expired_tokens(proxied, store, state):
    app, backend, _ = proxied
    clear, record = new_token(1)
    if state == "revoked":
        store.save_token(record)
        store.revoke_token(record.digest)
    else:
        store.save_token(AccessToken(digest=record.digest, expires_at=utcnow() - timedelta(minutes=1)))
    response = app.get(f"/ows/proxy/emu?{EXECUTE}&access_token={clear}", status=401)
    assert state in text_of(assert_report(response, 401, "NoApplicableCode", "access_token"))
    assert not backend.seen


def test_real_app_with_the_store_down_is_503_and_never_calls_the_backend(proxied, monkeypatch):
    app, backend, token = proxied
    store = app.app.registry.store

    def down(*args):
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "fetch_by_name", down)
    monkeypatch.setattr(store, "fetch_token", down)
    for url in (f"/ows/proxy/emu?{GETCAPS}", f"/ows/proxy/emu?{EXECUTE}&access_token={token}"):
        assert_report(app.get(url, status=503), 503, "NoApplicableCode")
    assert not backend.seen


def test_real_app_with_a_public_service_forwards_everything(make_app, store, backend):
    recorder, base_url = backend
    store.save_service(Service(name="open", url=base_url + "/svc/wps", public=True))
    app = make_app()
    app.get(f"/ows/proxy/open?{EXECUTE}")
    app.get("/ows/proxy/open/outputs/a.nc")
    assert [seen["query"] for seen in recorder.seen] == [EXECUTE, ""]


# -- the token in the path (the 0.3/0.4 URL form) --------------------------------------------

def test_token_as_last_path_segment_passes_and_reaches_the_service_root(app, recorder, token):
    app.get(f"/ows/proxy/emu/{token}?{EXECUTE}")
    seen = recorder.last
    assert seen["environ"]["PATH_INFO"] == "/ows/proxy/emu"
    assert seen["query"] == EXECUTE
    assert token not in repr(seen["environ"])


def test_token_in_the_path_of_the_internal_wps_brings_its_environ(app, recorder, token):
    app.get(f"/ows/wps/{token}?{EXECUTE}")
    assert recorder.last["environ"]["PATH_INFO"] == "/ows/wps"
    assert recorder.last["environ"]["DATA_USER"] == "alice"


def test_revoked_token_in_the_path_is_refused_with_the_reason(app, recorder, token):
    app.app.registry.store.revoke_token(token_digest(token))
    refused = app.get(f"/ows/proxy/emu/{token}?{EXECUTE}", status=401)
    assert "revoked" in text_of(assert_report(refused, 401, "NoApplicableCode", "access_token"))
    assert recorder.calls == []


@pytest.mark.parametrize("segment", ["jobs", "a" * 43, "outputs"])
def test_a_segment_that_is_no_known_token_stays_an_extra_path_needing_a_token(app, recorder, segment):
    assert_report(app.get(f"/ows/proxy/emu/{segment}?{EXECUTE}", status=401), 401, "NoApplicableCode", "access_token")
    assert recorder.calls == []


def test_a_known_token_deeper_in_the_path_is_not_taken_for_one(app, recorder, token):
    app.get(f"/ows/proxy/emu/outputs/{token}", status=401)
    assert recorder.calls == []


def test_path_token_and_a_different_query_token_are_refused(app, recorder, token):
    other, record = new_token(1)
    app.app.registry.store.save_token(record)
    refused = app.get(f"/ows/proxy/emu/{token}?{EXECUTE}&access_token={other}", status=400)
    assert_report(refused, 400, "InvalidParameterValue", "access_token")
    assert recorder.calls == []
