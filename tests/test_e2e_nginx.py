"""End to end with a real nginx in front (``twitcher.data_plane = nginx``): the same checks as the
Python proxy's end-to-end tests, through the configuration ``twitcherctl nginx-config`` writes.

A real PyWPS backend, a real Twitcher (waitress) whose public URL is nginx's, and Debian's nginx
running the generated configuration. Skipped, saying why, only when nginx is not installed.
"""
from __future__ import annotations

import time
from typing import Iterator, List
from urllib.parse import urlsplit

import pytest
import requests
from lxml import etree
from owslib.wps import ASYNC, SYNC, WebProcessingService

from tests.nginx import error_log, free_port, nginx_binary, serve_nginx
from tests.pywps_backend import PyWPSBackend
from tests.servers import LateApp, serve_wsgi, service_store
from tests.test_e2e_proxy import BACKEND_REPORT, RSSSampler, _broken_ows_app, _closed_port, download_sha256
from twitcher import main
from twitcher.dataplane.nginxconf import Front, nginx_config
from twitcher.services import service_from_registration
from twitcher.settings import parse_settings
from twitcher.tokens import new_token

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)")

TIMEOUT = 30
OWS = "{http://www.opengis.net/ows/1.1}"
WPS = "{http://www.opengis.net/wps/1.0.0}"
SECRET = "front-secret-for-the-nginx-tests"
LARGE_MB = 200
#: twitcher.max_request_body of these tests (nginx's client_max_body_size).
LIMIT = 64 * 1024
MAX_RSS_GROWTH_MB = 96
MAP_BYTES = bytes(range(256)) * 4096  # 1 MiB "image"
POST_RAW_EXECUTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<wps:Execute service="WPS" version="1.0.0" xmlns:wps="http://www.opengis.net/wps/1.0.0"
    xmlns:ows="http://www.opengis.net/ows/1.1">
  <ows:Identifier>hello</ows:Identifier>
  <wps:DataInputs><wps:Input><ows:Identifier>name</ows:Identifier>
    <wps:Data><wps:LiteralData>raw</wps:LiteralData></wps:Data></wps:Input></wps:DataInputs>
  <wps:ResponseForm><wps:RawDataOutput><ows:Identifier>greeting</ows:Identifier></wps:RawDataOutput>
  </wps:ResponseForm>
</wps:Execute>
"""


#: The backend's base URL, once it is bound.
BACKEND = {"url": ""}


def _map_app(environ, start_response):
    """A GetMap-like backend: binary bytes for GetMap, a capabilities document naming itself."""
    query = environ.get("QUERY_STRING", "").lower()
    base = BACKEND["url"] + "/map"  # its own address (HTTP_HOST is the public one: it trusts X-Forwarded-Host)
    if "request=getcapabilities" in query:
        body = (f'<?xml version="1.0"?><WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms" '
                f'xmlns:xlink="http://www.w3.org/1999/xlink"><Capability><Request><GetMap><DCPType><HTTP><Get>'
                f'<OnlineResource xlink:href="{base}?"/></Get></HTTP></DCPType></GetMap></Request></Capability>'
                f'</WMS_Capabilities>').encode()
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]
    if "request=getmap" in query and "error=1" in query:
        body = f'<ServiceExceptionReport><ServiceException>see {base}?x</ServiceException></ServiceExceptionReport>'
        start_response("200 OK", [("Content-Type", "application/vnd.ogc.se_xml")])
        return [body.encode()]
    start_response("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(len(MAP_BYTES))),
                              ("Cache-Control", "public, max-age=60"), ("Link", f'<{base}?legend>; rel="legend"')])
    return [MAP_BYTES]


def _slow_app(environ, start_response):
    time.sleep(5)  # past the read timeout of these tests (4 s)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"too late"]


def _redirect_app(environ, start_response):
    start_response("302 Found", [("Location", BACKEND["url"] + "/outputs/moved.bin"), ("Content-Length", "0")])
    return [b""]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    wps = PyWPSBackend(tmp_path_factory.mktemp("pywps-nginx"))
    wps.extra.update({"/slow": _slow_app, "/broken-ows": _broken_ows_app, "/map": _map_app,
                      "/outputs/redirect.bin": _redirect_app})
    with serve_wsgi(wps, trusted_proxy="127.0.0.1",
                    trusted_proxy_headers={"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}) as base_url:
        wps.configure(base_url)
        BACKEND["url"] = base_url
        yield wps, base_url


class Deployment:
    """Twitcher behind nginx: ``url`` is nginx's, ``app_url`` Twitcher's own (for direct requests)."""

    def __init__(self, url: str, app_url: str, store, prefix, exchanges: List[str]) -> None:
        self.url = url
        self.app_url = app_url
        self.store = store
        self.prefix = prefix
        #: The backend URLs Twitcher itself sent requests to (what nginx carried is not here).
        self.exchanges = exchanges

    @property
    def emu(self) -> str:
        return self.url + "/ows/proxy/emu"


OPERATOR_LOCATION = """
    location /ows/proxy/maps/tiles/ {
        auth_request /_twitcher/verify;
        rewrite ^ /map break;
        proxy_pass http://twitcher_svc_maps;
        proxy_set_header Authorization "";
        proxy_set_header Access-Token "";
    }
"""


def _count_exchanges(upstream) -> List[str]:
    seen: List[str] = []
    exchange = upstream.exchange

    def counted(method, url, *args, **kwargs):
        seen.append(url)
        return exchange(method, url, *args, **kwargs)

    upstream.exchange = counted
    return seen


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, backend) -> Iterator[Deployment]:
    _, backend_url = backend
    work = tmp_path_factory.mktemp("nginx-deployment")
    services = [(backend_url + "/wps", {"name": "emu"}),
                (backend_url + "/map", {"name": "maps", "type": "wms"}),
                (backend_url + "/slow", {"name": "slow", "type": "wms", "public": True}),
                (backend_url + "/broken-ows", {"name": "broken-ows", "public": True}),
                (f"http://127.0.0.1:{_closed_port()}/map", {"name": "down", "type": "wms", "public": True})]
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    # Not running_twitcher: twitcher.url must be nginx's address, not the app's own, and the app
    # itself is needed (its upstream is counted, its settings go into nginx's configuration).
    with service_store(work, services) as store:
        raw = {"twitcher.db_url": f"sqlite:///{store.path}", "twitcher.password": "nginx-admin-password",
               "twitcher.url": public, "twitcher.proxy_timeout": "2 4", "twitcher.max_request_body": str(LIMIT),
               "twitcher.data_plane": "nginx", "twitcher.front_secret": SECRET}
        late = LateApp()
        with serve_wsgi(late) as app_url:
            late.app = main({}, **raw)
            exchanges = _count_exchanges(late.app.registry.upstream)
            settings = parse_settings(raw, environ={})
            generated = nginx_config(store.list_services(), settings,
                                     Front(f"127.0.0.1:{port}", urlsplit(app_url).netloc))
            # An operator's own location guarded by auth_request, inside the generated server block.
            generated = generated.rstrip().removesuffix("}") + OPERATOR_LOCATION + "}\n"
            prefix = work / "nginx"
            try:
                with serve_nginx(NGINX, prefix, generated, port) as url:
                    yield Deployment(url, app_url, store, prefix, exchanges)
            finally:
                late.app.registry.upstream.close()


@pytest.fixture(scope="module")
def token(deployment) -> str:
    token, record = new_token(1)
    deployment.store.save_token(record)
    return token


def _wps(url: str, **kwargs) -> WebProcessingService:
    return WebProcessingService(url, version="1.0.0", skip_caps=True, timeout=TIMEOUT, **kwargs)


def _report(answer: requests.Response):
    assert answer.headers["Content-Type"].startswith("text/xml"), answer.headers
    return etree.fromstring(answer.content).find(f"{OWS}Exception")


def test_generated_configuration_passes_nginx_t(deployment):
    assert "emerg" not in error_log(deployment.prefix)


def test_public_capabilities_are_rewritten_by_twitcher(deployment, backend):
    answer = requests.get(deployment.emu + "?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 200
    assert backend[1].encode() not in answer.content
    wps = _wps(deployment.emu)
    wps.getcapabilities()
    hrefs = [m["url"] for op in wps.operations for m in op.methods]
    assert hrefs and all(h.startswith(deployment.emu) for h in hrefs)


def test_getmap_is_carried_by_nginx_and_the_token_never_reaches_the_backend(deployment, backend, token):
    wps, backend_url = backend
    mark, carried = len(wps.requests), len(deployment.exchanges)
    answer = requests.get(deployment.url + "/ows/proxy/maps?service=WMS&request=GetMap&layers=a&access_token="
                          + token, headers={"Referer": f"http://portal/?access_token={token}"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.content == MAP_BYTES
    assert deployment.exchanges[carried:] == []  # nginx carried it, not Twitcher
    assert "X-Twitcher-Target" not in answer.headers and "X-Accel-Redirect" not in answer.headers
    assert "Link" not in answer.headers  # it named the backend
    assert answer.headers["Cache-Control"] == "private"  # protected: never "public"
    assert "Authorization" in answer.headers["Vary"]
    seen = wps.requests[mark:]
    assert [r.path for r in seen] == ["/map"]
    assert token not in seen[0].query and token not in "".join(seen[0].headers.values())
    assert "Referer" not in seen[0].headers
    assert seen[0].headers["X-Forwarded-Host"] == urlsplit(deployment.url).netloc
    assert "X-Twitcher-Front" not in seen[0].headers


def test_getmap_without_token_is_refused_by_twitcher(deployment, backend):
    wps, _ = backend
    mark = len(wps.requests)
    answer = requests.get(deployment.url + "/ows/proxy/maps?service=WMS&request=GetMap&layers=a", timeout=TIMEOUT)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert _report(answer).get("locator") == "access_token"
    assert wps.requests[mark:] == []


def test_error_document_from_a_data_request_names_no_backend(deployment, backend, token):
    answer = requests.get(deployment.url + "/ows/proxy/maps?service=WMS&request=GetMap&error=1",
                          headers={"Access-Token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert backend[1] not in answer.text
    assert deployment.url + "/ows/proxy/maps/map?x" in answer.text


def test_sync_execute_by_get_with_token(deployment, token):
    execution = _wps(f"{deployment.emu}?access_token={token}").execute("hello", [("name", "nginx")], mode=SYNC)
    assert execution.isSucceded(), execution.errors
    assert execution.processOutputs[0].data == ["Hello nginx"]


def test_execute_without_token_is_refused(deployment, backend):
    wps, _ = backend
    mark = len(wps.requests)
    answer = requests.get(deployment.emu + "?service=WPS&request=Execute&version=1.0.0&identifier=hello"
                          "&DataInputs=name=x", timeout=TIMEOUT)
    assert answer.status_code == 401
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"
    assert wps.requests[mark:] == []


def test_post_execute_with_raw_output_is_handed_to_nginx_as_a_post(deployment, backend, token):
    wps, _ = backend
    mark, carried = len(wps.requests), len(deployment.exchanges)
    answer = requests.post(deployment.emu, data=POST_RAW_EXECUTE, timeout=TIMEOUT,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "text/xml"})
    assert answer.status_code == 200, answer.text
    assert answer.text == "Hello raw"
    seen = wps.requests[mark:]
    assert [(r.method, r.path) for r in seen] == [("POST", "/wps")]
    assert seen[0].body == POST_RAW_EXECUTE
    assert deployment.exchanges[carried:] == []
    assert "Authorization" not in seen[0].headers


def test_post_execute_document_stays_with_twitcher(deployment, token):
    carried = len(deployment.exchanges)
    execution = _wps(deployment.emu, headers={"Access-Token": token}).execute("hello", [("name", "post")], mode=SYNC)
    assert execution.isSucceded(), execution.errors
    assert execution.processOutputs[0].data == ["Hello post"]
    assert len(deployment.exchanges) == carried + 1  # an ExecuteResponse: Twitcher rewrites it


def test_async_execute_is_polled_to_completion(deployment, token):
    execution = _wps(deployment.emu, headers={"Access-Token": token}).execute(
        "countdown", [("steps", "2"), ("delay", "0.2")], output=[("result", False)], mode=ASYNC)
    assert execution.statusLocation.startswith(deployment.emu + "/")
    deadline = time.monotonic() + TIMEOUT
    while not execution.isComplete():
        assert time.monotonic() < deadline, "the async job did not finish in time"
        execution.checkStatus(sleepSecs=0.2)
    assert execution.isSucceded(), execution.errors
    assert requests.get(execution.statusLocation, timeout=TIMEOUT).status_code == 401


def test_large_output_through_nginx_streams_with_matching_hash(deployment, token, backend):
    # Asynchronous: writing the file may take longer than the read timeout of these tests.
    execution = _wps(deployment.emu, headers={"Access-Token": token}).execute(
        "bigfile", [("size_mb", str(LARGE_MB))], mode=ASYNC)
    deadline = time.monotonic() + 120
    while not execution.isComplete():
        assert time.monotonic() < deadline, "the bigfile job did not finish in time"
        execution.checkStatus(sleepSecs=0.3)
    assert execution.isSucceded(), execution.errors
    outputs = {o.identifier: o for o in execution.processOutputs}
    reference, expected = outputs["file"].reference, outputs["sha256"].data[0]
    assert reference.startswith(deployment.emu + "/outputs/")
    assert requests.get(reference, timeout=TIMEOUT).status_code == 401
    carried = len(deployment.exchanges)
    with RSSSampler() as memory:
        hexdigest, size = download_sha256(reference, {"access_token": token})
    assert size == LARGE_MB << 20
    assert hexdigest == expected
    assert deployment.exchanges[carried:] == []
    assert (max(memory.samples) - memory.samples[0]) / 2**20 < MAX_RSS_GROWTH_MB


def test_backend_redirect_through_nginx_leads_through_the_proxy(deployment, token):
    answer = requests.get(deployment.emu + "/outputs/redirect.bin", headers={"Access-Token": token},
                          allow_redirects=False, timeout=TIMEOUT)
    assert answer.status_code == 302
    assert answer.headers["Location"] == deployment.emu + "/outputs/moved.bin"


def test_backend_down_is_a_502_exception_report_from_nginx(deployment):
    answer = requests.get(deployment.url + "/ows/proxy/down?service=WMS&request=GetMap", timeout=TIMEOUT)
    assert answer.status_code == 502
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"
    assert "127.0.0.1" not in answer.text


def test_backend_too_slow_is_a_504_exception_report_from_nginx(deployment):
    answer = requests.get(deployment.url + "/ows/proxy/slow?service=WMS&request=GetMap", timeout=TIMEOUT)
    assert answer.status_code == 504
    assert _report(answer).get("exceptionCode") == "NoApplicableCode"


def test_backend_exception_report_passes_with_its_status(deployment):
    answer = requests.get(deployment.url + "/ows/proxy/broken-ows?service=WPS&request=GetCapabilities",
                          timeout=TIMEOUT)
    assert answer.status_code == 500
    assert answer.content == BACKEND_REPORT


def test_unknown_service_is_a_404_exception_report(deployment):
    answer = requests.get(deployment.url + "/ows/proxy/nothing?service=WPS&request=GetCapabilities", timeout=TIMEOUT)
    assert answer.status_code == 404
    assert _report(answer).get("locator") == "service_name"


# --- what only nginx may ask --------------------------------------------------------------------

def test_internal_locations_are_not_reachable_from_outside(deployment, token):
    for path in ("/ows/verify/maps", "/_twitcher/verify", "/_twitcher/data/maps/x"):
        answer = requests.get(deployment.url + path + f"?service=WMS&request=GetMap&access_token={token}",
                              headers={"X-Original-Method": "GET"}, timeout=TIMEOUT)
        assert answer.status_code == 404, path
        assert "X-Twitcher-Upstream" not in answer.headers


def test_direct_request_to_twitcher_gets_no_hand_off(deployment, token, backend):
    """Not from the front: Twitcher answers itself, the backend is never named."""
    answer = requests.get(deployment.app_url + "/ows/proxy/maps?service=WMS&request=GetMap",
                          headers={"Access-Token": token, "X-Twitcher-Front": "guess"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.content == MAP_BYTES
    assert not any(k.lower().startswith(("x-accel", "x-twitcher")) for k in answer.headers)


def test_verify_refuses_requests_not_from_the_front(deployment, token):
    answer = requests.get(deployment.app_url + "/ows/verify/maps",
                          headers={"X-Original-Method": "GET", "X-Original-URI": "/ows/proxy/maps?request=GetMap",
                                   "Access-Token": token}, timeout=TIMEOUT)
    assert answer.status_code == 403
    assert "X-Twitcher-Upstream" not in answer.headers


def _verify(deployment, path, headers):
    return requests.request(headers.pop("method", "GET"), deployment.app_url + path,
                            headers={"X-Twitcher-Front": SECRET, **headers}, timeout=TIMEOUT)


def test_verify_without_method_header_refuses_a_post(deployment, token):
    answer = _verify(deployment, "/ows/verify/maps", {"method": "POST", "Access-Token": token,
                                                      "X-Original-URI": "/ows/proxy/maps?service=WMS&request=GetMap"})
    assert answer.status_code == 403
    assert "X-Original-Method" in _report(answer).findtext(f"{OWS}ExceptionText")


def test_verify_judges_the_original_method_not_the_subrequest(deployment, token, backend):
    uri = "/ows/proxy/emu?service=WPS&request=GetCapabilities"
    assert _verify(deployment, "/ows/verify/emu", {"X-Original-Method": "GET", "X-Original-URI": uri}
                   ).status_code == 200
    answer = _verify(deployment, "/ows/verify/emu", {"X-Original-Method": "POST", "X-Original-URI": uri,
                                                     "Access-Token": token})
    assert answer.status_code == 403  # a POST to a WPS is judged by its body, which nginx did not send
    answer = _verify(deployment, "/ows/verify/emu/outputs/x.nc", {"X-Original-Method": "DELETE"})
    assert answer.status_code == 403 and answer.headers["X-Twitcher-Status"] == "405"


def test_verify_answers_the_upstream_url_without_the_token(deployment, token, backend):
    uri = f"/ows/proxy/maps?service=WMS&request=GetMap&layers=a&access_token={token}"
    answer = _verify(deployment, "/ows/verify/maps", {"X-Original-Method": "GET", "X-Original-URI": uri})
    assert answer.status_code == 200
    assert answer.headers["X-Twitcher-Upstream"] == backend[1] + "/map?service=WMS&request=GetMap&layers=a"
    assert answer.headers["X-Twitcher-Private"] == "1" and answer.headers["X-Twitcher-Data"] == "1"
    answer = _verify(deployment, "/ows/verify/maps", {"X-Original-Method": "GET",
                                                      "X-Original-URI": uri.replace(token, "x" * 43)})
    assert answer.status_code == 401
    assert _report(answer).get("locator") == "access_token"


def test_operator_location_guarded_by_auth_request(deployment, token, backend):
    wps, _ = backend
    url = deployment.url + "/ows/proxy/maps/tiles/1/2/3.png"
    mark = len(wps.requests)
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    assert requests.get(url, params={"access_token": "x" * 43}, timeout=TIMEOUT).status_code == 401
    assert requests.delete(url, headers={"Access-Token": token}, timeout=TIMEOUT).status_code == 403
    assert wps.requests[mark:] == []
    answer = requests.get(url, headers={"Access-Token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.content == MAP_BYTES
    assert "Access-Token" not in wps.requests[-1].headers


def test_service_registered_after_the_configuration_works_through_twitcher(deployment, backend, token):
    """nginx has no location for it: the hand-off comes back to Twitcher, which forwards it itself."""
    deployment.store.save_service(service_from_registration(backend[1] + "/map", {"name": "late", "type": "wms"}))
    carried = len(deployment.exchanges)
    answer = requests.get(deployment.url + "/ows/proxy/late?service=WMS&request=GetMap",
                          headers={"Access-Token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.content == MAP_BYTES
    assert deployment.exchanges[carried:] == [backend[1] + "/map?service=WMS&request=GetMap"]
    assert answer.headers["Link"] == f'<{deployment.url}/ows/proxy/late?legend>; rel="legend"'
    assert answer.headers["Cache-Control"].startswith("private")


def test_head_of_a_map_is_carried_by_nginx_without_a_body(deployment, token):
    carried = len(deployment.exchanges)
    answer = requests.head(deployment.url + "/ows/proxy/maps?service=WMS&request=GetMap",
                           headers={"Access-Token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["Content-Length"] == str(len(MAP_BYTES))
    assert deployment.exchanges[carried:] == []


def test_body_over_the_limit_is_refused_by_nginx_as_twitcher_words_it(deployment, token):
    answer = requests.post(deployment.emu, data=b"<x/>" * (LIMIT // 4 + 1), timeout=TIMEOUT,
                           headers={"Access-Token": token, "Content-Type": "text/xml"})
    assert answer.status_code == 413
    assert _report(answer).findtext(f"{OWS}ExceptionText") == f"The request body is larger than {LIMIT} bytes."


def test_post_to_a_service_registered_after_the_configuration_keeps_its_body(deployment, backend, token):
    """The fallback sends the POST back to Twitcher with its method and body (nginx kept it)."""
    wps, backend_url = backend
    deployment.store.save_service(service_from_registration(backend_url + "/wps", {"name": "late-wps"}))
    carried, mark = len(deployment.exchanges), len(wps.requests)
    answer = requests.post(deployment.url + "/ows/proxy/late-wps", data=POST_RAW_EXECUTE, timeout=TIMEOUT,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "text/xml"})
    assert answer.status_code == 200, answer.text
    assert answer.text == "Hello raw"
    assert deployment.exchanges[carried:] == [backend_url + "/wps"]
    assert [(r.method, r.body) for r in wps.requests[mark:]] == [("POST", POST_RAW_EXECUTE)]
