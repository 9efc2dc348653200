"""The internal WPS: PyWPS at /ows/wps, its configuration, and token data reaching its handlers."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from lxml import etree
from pywps import LiteralInput, LiteralOutput, Process
from pywps.app.WPSRequest import WPSRequest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as WerkzeugRequest

from tests.servers import serve_wsgi
from twitcher import main
from twitcher.exceptions import ConfigurationError, OWSException
from twitcher.services import Service
from twitcher.tokens import AccessToken, fingerprint, new_token, token_digest, utcnow
from twitcher.wps import _output_path, read_status_document, token_environ
from twitcher.wpsprocesses import DEMO_ENVIRON_KEYS

WPS_NS = {"wps": "http://www.opengis.net/wps/1.0.0", "ows": "http://www.opengis.net/ows/1.1"}
EXECUTE = "/ows/wps?service=WPS&request=Execute&version=1.0.0&identifier="
#: Upper bound for waiting on an async job in these tests.
JOB_TIMEOUT = 20.0


def _probe(request, response):
    """Report the raw WSGI environ value of the asked key, as JSON (null when absent)."""
    key = request.inputs["key"][0].data
    time.sleep(0.05)  # long enough for concurrent requests to overlap
    environ = request.http_request.environ if request.http_request is not None else {}
    response.outputs["value"].data = json.dumps(environ.get(key))
    return response


def probe_processes():
    """A test-only process that shows exactly what reached the handler's WSGI environ."""
    return [Process(_probe, identifier="environ_probe", title="Environ probe",
                    inputs=[LiteralInput("key", "Environ key", data_type="string")],
                    outputs=[LiteralOutput("value", "JSON value", data_type="string")],
                    store_supported=True, status_supported=True)]


NOT_PROCESSES = ["not a process"]
PROCESSES = "twitcher.wpsprocesses.demo_processes tests.test_wps.probe_processes"


@pytest.fixture
def wps_settings(app_settings, tmp_path):
    """``app_settings`` with the internal WPS on, its work directory in ``tmp_path``."""
    app_settings.update({"twitcher.wps": "true", "twitcher.wps_processes": PROCESSES,
                         "twitcher.wps_workdir": str(tmp_path / "wps")})
    return app_settings


@pytest.fixture
def wps_app(make_app, wps_settings):
    return make_app()


def make_token(store, environ=None) -> str:
    token, record = new_token(1, environ)
    store.save_token(record)
    return token


def store_raw_token(store, environ) -> str:
    """A token whose environ skipped the admin API's checks, as a tampered database would hold."""
    token, _ = new_token(1)
    store.save_token(AccessToken(digest=token_digest(token), expires_at=utcnow().replace(year=utcnow().year + 1),
                                 environ=environ))
    return token


def output_data(body: bytes, identifier: str) -> str:
    doc = etree.fromstring(body)
    for output in doc.iterfind(".//wps:Output", WPS_NS):
        if output.findtext("ows:Identifier", namespaces=WPS_NS) == identifier:
            data = output.find("wps:Data/*", WPS_NS)
            if data is not None:
                return data.text
    raise AssertionError(f"no inline output {identifier!r} in {body[:500]!r}")


def probe(app, token, key: str, status=200):
    return app.get(f"{EXECUTE}environ_probe&DataInputs=key={key}", headers={"Access-Token": token}, status=status)


def inspect_report(body: bytes) -> dict:
    return json.loads(output_data(body, "report"))


def wait_for_job(get, status_url: str) -> bytes:
    """Poll a status document (bounded) until the job succeeded or failed."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        body = get(status_url)
        status = etree.fromstring(body).find("wps:Status/*", WPS_NS)
        if status is not None and etree.QName(status).localname in ("ProcessSucceeded", "ProcessFailed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job at {status_url} did not finish within {JOB_TIMEOUT} s")


# -- public requests and the token requirement -------------------------------------------------

def test_capabilities_need_no_token_and_list_the_processes(wps_app):
    body = wps_app.get("/ows/wps?service=WPS&request=GetCapabilities").body
    identifiers = etree.fromstring(body).xpath("//wps:Process/ows:Identifier/text()", namespaces=WPS_NS)
    assert {"hello", "inspect_environ", "environ_probe"} <= set(identifiers)


def test_capabilities_point_clients_back_at_twitcher(wps_app):
    body = wps_app.get("/ows/wps?service=WPS&request=GetCapabilities").body
    hrefs = etree.fromstring(body).xpath("//ows:Get/@xlink:href | //ows:Post/@xlink:href",
                                         namespaces={**WPS_NS, "xlink": "http://www.w3.org/1999/xlink"})
    assert hrefs and all(href.startswith("http://localhost/ows/wps") for href in hrefs)


def test_describe_process_needs_no_token(wps_app):
    body = wps_app.get("/ows/wps?service=WPS&request=DescribeProcess&version=1.0.0&identifier=inspect_environ").body
    assert etree.fromstring(body).findtext(".//ows:Identifier", namespaces=WPS_NS) == "inspect_environ"


def test_execute_without_token_is_refused_with_401(wps_app):
    response = wps_app.get(EXECUTE + "hello", status=401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"access_token" in response.body


def test_execute_with_a_token_runs_the_process(wps_app, store):
    response = wps_app.get(EXECUTE + "hello&DataInputs=name=Twitcher", headers={"Access-Token": make_token(store)})
    assert output_data(response.body, "output") == "Hello Twitcher"


# -- token environ in the handler ---------------------------------------------------------------

def test_handler_sees_the_token_environ(wps_app, store):
    token = make_token(store, {"DATA_TOKEN": "abc"})
    assert json.loads(output_data(probe(wps_app, token, "DATA_TOKEN").body, "value")) == "abc"


def test_demo_process_reports_received_keys_by_fingerprint_only(wps_app, store):
    token = make_token(store, {"DATA_TOKEN": "abc", "DATA_USER": "alice"})
    body = wps_app.get(EXECUTE + "inspect_environ", headers={"Authorization": f"Bearer {token}"}).body
    assert inspect_report(body) == {
        "received": {"DATA_TOKEN": "sha256:" + fingerprint("abc"), "DATA_USER": "sha256:" + fingerprint("alice")},
        "missing": [k for k in DEMO_ENVIRON_KEYS if k not in ("DATA_TOKEN", "DATA_USER")],
    }
    assert b"alice" not in body


def test_each_token_sees_only_its_own_data(wps_app, store):
    first = make_token(store, {"DATA_TOKEN": "abc"})
    second = make_token(store, {"DATA_TOKEN": "xyz"})
    plain = make_token(store)
    for token, expected in [(first, "abc"), (second, "xyz"), (plain, None), (first, "abc")]:
        assert json.loads(output_data(probe(wps_app, token, "DATA_TOKEN").body, "value")) == expected


def test_concurrent_requests_each_see_their_own_token_data(wps_settings, store):
    values = [f"user-{i}" for i in range(24)]
    tokens = {value: make_token(store, {"DATA_TOKEN": value}) for value in values}

    with serve_wsgi(main({}, **wps_settings), threads=8) as base_url:
        def run(value):
            response = requests.get(f"{base_url}{EXECUTE}environ_probe&DataInputs=key=DATA_TOKEN",
                                    headers={"Access-Token": tokens[value]}, timeout=30)
            response.raise_for_status()
            return json.loads(output_data(response.content, "value"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            seen = list(pool.map(run, values))
    assert seen == values


@pytest.mark.parametrize("key", ["REMOTE_USER", "remote_user", "HTTP_AUTHORIZATION", "SCRIPT_NAME", "wsgi.url_scheme"])
def test_a_forbidden_key_in_stored_token_data_never_reaches_the_handler(wps_app, store, key):
    token = store_raw_token(store, {"DATA_TOKEN": "abc", key: "mallory"})
    response = probe(wps_app, token, key, status="*")
    assert response.status_int >= 400
    assert b"mallory" not in response.body
    assert b"ExecuteResponse" not in response.body


@pytest.mark.parametrize("key", ["PYWPS_CFG", "pywps_cfg"])
def test_pywps_keys_in_token_data_never_reach_pywps(wps_app, store, tmp_path, monkeypatch, key):
    # PyWPS would copy PYWPS_CFG from the WSGI environ into os.environ: process-wide configuration.
    monkeypatch.delenv("PYWPS_CFG", raising=False)
    token = make_token(store, {key: str(tmp_path / "evil.cfg"), "DATA_TOKEN": "abc"})
    assert json.loads(output_data(probe(wps_app, token, key).body, "value")) is None
    assert "PYWPS_CFG" not in os.environ


# -- async jobs, status documents and outputs ----------------------------------------------------

def test_async_jobs_carry_their_own_token_data(wps_app, store):
    jobs = {}
    for value in ("abc", "xyz"):
        token = make_token(store, {"DATA_TOKEN": value})
        response = wps_app.get(EXECUTE + "inspect_environ&DataInputs=delay=1&storeExecuteResponse=true&status=true",
                               headers={"Access-Token": token})
        status_url = etree.fromstring(response.body).get("statusLocation")
        assert status_url.startswith("http://localhost/ows/wps/outputs/")
        jobs[value] = (token, status_url)

    for value, (token, status_url) in jobs.items():
        body = wait_for_job(lambda url, t=token: wps_app.get(url, headers={"Access-Token": t}).body, status_url)
        assert inspect_report(body)["received"] == {"DATA_TOKEN": "sha256:" + fingerprint(value)}


def test_status_documents_and_outputs_need_a_token(wps_app, store):
    token = make_token(store)
    response = wps_app.get(EXECUTE + "hello&storeExecuteResponse=true&status=true", headers={"Access-Token": token})
    status_url = etree.fromstring(response.body).get("statusLocation")
    wait_for_job(lambda url: wps_app.get(url, headers={"Access-Token": token}).body, status_url)
    refused = wps_app.get(status_url, status=401)
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_outputs_are_served_with_headers_that_keep_browsers_from_running_them(wps_app, store):
    token = make_token(store)
    response = wps_app.get(EXECUTE + "hello&storeExecuteResponse=true&status=true", headers={"Access-Token": token})
    status_url = etree.fromstring(response.body).get("statusLocation")
    wait_for_job(lambda url: wps_app.get(url, headers={"Access-Token": token}).body, status_url)
    served = wps_app.get(status_url, headers={"Access-Token": token})
    assert served.content_type in ("application/xml", "text/xml")
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Security-Policy"] == "sandbox"


@pytest.mark.parametrize("path", ["..%2Fpywps-jobs.sqlite", "%2e%2e/pywps-jobs.sqlite", "nothing-here.xml", ""])
def test_nothing_outside_the_output_directory_is_served(wps_app, store, path):
    response = wps_app.get("/ows/wps/outputs/" + path, headers={"Access-Token": make_token(store)}, status="*")
    assert response.status_int == 404
    assert b"SQLite" not in response.body


def test_output_path_refuses_symlinks_that_leave_the_directory(tmp_path):
    root = (tmp_path / "outputs").resolve()
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "job").mkdir()
    (root / "job" / "result.json").write_text("{}")
    assert _output_path(root, ("link.txt",)) is None
    assert _output_path(root, ("job",)) is None
    assert _output_path(root, ("job", "result.json")) == root / "job" / "result.json"


def test_a_status_document_caught_mid_write_is_read_again_until_complete(tmp_path):
    path = tmp_path / "job.xml"
    path.write_bytes(b"<wps:ExecuteResponse xmlns:wps")  # what a poll sees while PyWPS rewrites it
    complete = b'<wps:ExecuteResponse xmlns:wps="http://www.opengis.net/wps/1.0.0"/>'
    writer = threading.Timer(0.1, path.write_bytes, args=(complete,))
    writer.start()
    try:
        assert read_status_document(path) == complete
    finally:
        writer.join(timeout=5)


def test_a_status_document_that_stays_incomplete_is_503(tmp_path):
    path = tmp_path / "job.xml"
    path.write_bytes(b"")
    with pytest.raises(OWSException) as info:
        read_status_document(path, attempts=3)
    assert info.value.status == 503


def test_other_http_methods_are_refused(wps_app, store):
    response = wps_app.put(EXECUTE + "hello", headers={"Access-Token": make_token(store)}, status=405)
    assert b"OperationNotSupported" in response.body


# -- the proxy never carries token data ---------------------------------------------------------

def test_the_same_token_on_the_proxy_does_not_send_its_data(wps_settings, store):
    seen = []

    def backend(environ, start_response):
        seen.append({k: v for k, v in environ.items() if isinstance(v, str)})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    token = make_token(store, {"DATA_TOKEN": "abc-secret-value"})
    with serve_wsgi(backend) as backend_url:
        store.save_service(Service(name="backend", url=backend_url + "/wps"))
        with serve_wsgi(main({}, **wps_settings)) as base_url:
            response = requests.get(f"{base_url}/ows/proxy/backend?service=WPS&request=Execute&version=1.0.0"
                                    f"&identifier=x&access_token={token}", timeout=10)
    assert response.status_code == 200
    received = [environ for environ in seen if environ.get("PATH_INFO", "").startswith("/wps")]
    assert len(received) == 1
    assert "DATA_TOKEN" not in received[0]
    assert not any("abc-secret-value" in value or token in value for value in received[0].values())


# -- handler-side reading of token data ----------------------------------------------------------

def test_token_environ_returns_only_the_named_keys_present():
    environ = EnvironBuilder(path="/wps").get_environ()
    environ.update({"DATA_TOKEN": "abc", "DATA_USER": "alice"})
    request = WPSRequest()
    request.http_request = WerkzeugRequest(environ)
    assert token_environ(request, ["DATA_TOKEN", "DATA_URL"]) == {"DATA_TOKEN": "abc"}


def test_token_environ_is_empty_for_a_request_restored_without_http_request():
    assert token_environ(WPSRequest(), DEMO_ENVIRON_KEYS) == {}


# -- start-up configuration ----------------------------------------------------------------------

def test_missing_pywps_stops_start_up_with_a_clear_message(make_app, wps_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "pywps", None)
    with pytest.raises(ConfigurationError, match=r"twitcher\[wps\]"):
        make_app()


@pytest.mark.parametrize("names, message", [
    ("no_such_module.processes", "cannot import 'no_such_module.processes'"),
    ("tests.test_wps.NOT_PROCESSES", "not a pywps.Process"),
    ("twitcher.wpsprocesses.demo_processes twitcher.wpsprocesses.hello", "'hello' is named twice"),
    ("", "names no processes"),
])
def test_bad_process_settings_stop_start_up(make_app, wps_settings, names, message):
    with pytest.raises(ConfigurationError, match="twitcher.wps") as info:
        make_app(wps_processes=names)
    assert message in str(info.value)


def test_a_list_and_a_factory_are_both_accepted(make_app, wps_settings):
    app = make_app(wps_processes="twitcher.wpsprocesses.hello tests.test_wps.probe_processes")
    assert set(app.app.registry.wps_service.processes) == {"hello", "environ_probe"}


def test_pywps_is_configured_to_answer_through_twitcher(wps_app, wps_settings):
    from pywps import configuration

    workdir = Path(wps_settings["twitcher.wps_workdir"]).resolve()
    assert configuration.get_config_value("server", "url") == "http://localhost/ows/wps"
    assert configuration.get_config_value("server", "outputurl") == "http://localhost/ows/wps/outputs/"
    assert Path(configuration.get_config_value("server", "outputpath")).resolve() == workdir / "outputs"
    assert Path(configuration.get_config_value("server", "workdir")).resolve() == workdir / "tmp"
    assert configuration.get_config_value("server", "maxprocesses") == "0"
    assert configuration.get_config_value("logging", "database") == f"sqlite:///{workdir / 'pywps-jobs.sqlite'}"
    assert wps_app.app.registry.wps_outputs == workdir / "outputs"


def test_wps_cfg_is_read_but_cannot_move_the_public_urls(make_app, wps_settings, tmp_path):
    cfg = tmp_path / "pywps.cfg"
    cfg.write_text("[server]\nurl = http://elsewhere.example/wps\noutputurl = http://elsewhere.example/out\n"
                   "parallelprocesses = 3\n[metadata:main]\nidentification_title = Our Own WPS\n")
    app = make_app(wps_cfg=str(cfg))
    body = app.get("/ows/wps?service=WPS&request=GetCapabilities").body
    assert b"Our Own WPS" in body
    assert b"elsewhere.example" not in body
    from pywps import configuration

    assert configuration.get_config_value("server", "parallelprocesses") == "3"


@pytest.mark.parametrize("content", [None, "no section header\n"])
def test_an_unreadable_wps_cfg_stops_start_up(make_app, wps_settings, tmp_path, content):
    cfg = tmp_path / "pywps.cfg"
    if content is not None:
        cfg.write_text(content)
    with pytest.raises(ConfigurationError, match="twitcher.wps_cfg"):
        make_app(wps_cfg=str(cfg))


def test_a_processing_mode_that_loses_the_environ_stops_start_up(make_app, wps_settings, tmp_path):
    cfg = tmp_path / "pywps.cfg"
    cfg.write_text("[processing]\nmode = scheduler\n")
    with pytest.raises(ConfigurationError, match="mode = scheduler"):
        make_app(wps_cfg=str(cfg))


def test_a_workdir_of_another_user_is_refused(make_app, wps_settings, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    if os.getuid() == 0:
        os.chown(foreign, 65534, -1)  # root can hand it to nobody
    else:
        foreign = Path("/")  # owned by root
    with pytest.raises(ConfigurationError, match="belongs to another user"):
        make_app(wps_workdir=str(foreign))


def test_home_links_the_internal_wps(wps_app):
    assert wps_app.get("/").json["links"]["wps"] == "http://localhost/ows/wps"

