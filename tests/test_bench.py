"""Smoke tests of the benchmark's fake backend and report, so that ``make bench`` cannot rot silently.

The load run itself is not part of the test suite: it takes minutes and needs wrk.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import webtest
from lxml import etree

from bench import backend, load, report, scenarios
from bench import tokens as bench_tokens

NS = {
    "ows": "http://www.opengis.net/ows/1.1",
    "wps": "http://www.opengis.net/wps/1.0.0",
    "xlink": "http://www.w3.org/1999/xlink",
}
HOST = "backend.test:8081"
BASE = f"http://{HOST}/wps"


@pytest.fixture
def backend_app() -> webtest.TestApp:
    return webtest.TestApp(backend.app, extra_environ={"HTTP_HOST": HOST})


def test_capabilities_is_about_20_kb_and_its_operation_urls_point_at_the_backend(backend_app):
    resp = backend_app.get("/wps", params={"SERVICE": "WPS", "Request": "GetCapabilities"})
    assert resp.content_type == "text/xml"
    assert 18_000 <= len(resp.body) <= 24_000
    doc = etree.fromstring(resp.body)
    hrefs = doc.xpath("//ows:Operation//@xlink:href", namespaces=NS)
    assert len(hrefs) == 6
    assert all(href.startswith(BASE) for href in hrefs)
    assert len(doc.xpath("//wps:Process", namespaces=NS)) == backend.CAPABILITIES_PROCESSES


def test_capabilities_follow_the_host_the_client_used(backend_app):
    resp = backend_app.get("/wps?service=WPS&request=GetCapabilities", extra_environ={"HTTP_HOST": "other:9"})
    assert b"http://other:9/wps?" in resp.body
    assert HOST.encode() not in resp.body


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_execute_answers_a_small_execute_response_linking_back_to_the_backend(backend_app, method):
    if method == "GET":
        resp = backend_app.get("/wps" + scenarios.GET_EXECUTE + "&access_token=abc")
    else:
        resp = backend_app.post("/wps", scenarios.POST_EXECUTE, headers={"Content-Type": "text/xml"})
    assert 800 <= len(resp.body) <= 1500
    doc = etree.fromstring(resp.body)
    assert etree.QName(doc).localname == "ExecuteResponse"
    assert doc.get("statusLocation").startswith(f"http://{HOST}/outputs/")
    assert doc.xpath("//wps:Reference/@href", namespaces=NS) == [f"http://{HOST}/outputs/1mb.bin"]


def test_each_execute_answer_names_a_job_of_its_own(backend_app):
    # One id for all would have Twitcher log "recorded already" per request, which no real WPS causes.
    locations = {etree.fromstring(backend_app.get("/wps" + scenarios.GET_EXECUTE).body).get("statusLocation")
                 for _ in range(3)}
    assert len(locations) == 3


def test_large_file_streams_in_blocks_with_the_announced_length_and_hash(backend_app):
    resp = backend_app.get("/outputs/3mb.bin")
    assert resp.content_type == "application/octet-stream"
    assert int(resp.headers["Content-Length"]) == len(resp.body) == 3 * backend.BLOCK_SIZE
    assert hashlib.sha256(resp.body).hexdigest() == backend.expected_sha256(3)
    # Deterministic but not a trivial pattern: a proxy that mangles or reorders blocks is caught.
    assert len(set(resp.body[:4096])) > 200
    assert backend.expected_sha256(3) != backend.expected_sha256(2)


@pytest.mark.parametrize("path, code, status", [
    ("/wps?service=WPS&request=GetMap", "OperationNotSupported", 400),
    ("/wps?service=WPS", "MissingParameterValue", 400),
    (f"/outputs/{backend.MAX_FILE_MB + 1}mb.bin", "InvalidParameterValue", 400),
])
def test_anything_else_is_an_exception_report(backend_app, path, code, status):
    resp = backend_app.get(path, status=status)
    doc = etree.fromstring(resp.body)
    assert etree.QName(doc).localname == "ExceptionReport"
    assert doc.find("ows:Exception", NS).get("exceptionCode") == code


def test_unsupported_method_is_a_405_exception_report(backend_app):
    resp = backend_app.delete("/wps", status=405)
    assert b"OperationNotSupported" in resp.body


def test_wrk_script_prints_the_json_line_the_runner_parses():
    script = Path(load.WRK_SCRIPT).read_text()
    assert "BENCH_JSON " in script and "function done" in script


def test_token_check_cost_is_measured_on_a_store_of_the_asked_size(tmp_path):
    row = bench_tokens.token_check_cost(tmp_path, size=300, lookups=200, probes=50)
    assert row["size"] == 300 and row["lookups"] == 200
    assert 0 < row["median_us"] <= row["p99_us"]
    assert not list(tmp_path.glob("tokens-*"))  # the store file is removed afterwards


def test_fill_token_store_holds_the_asked_number_of_tokens_and_the_probes_are_valid(tmp_path):
    from twitcher.store import open_store
    from twitcher.tokens import check_token, token_digest

    path = tmp_path / "t.sqlite"
    tokens, _ = bench_tokens.fill_token_store(f"sqlite:///{path}", path, size=500, probes=20)
    store = open_store(f"sqlite:///{path}")
    try:
        assert len(tokens) == 20
        for token in tokens:
            check_token(store.fetch_token(token_digest(token)))
    finally:
        store.close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 500


def test_evaluate_flags_each_target_from_the_measured_numbers():
    def rows(direct, proxied, ops):
        return {"direct": {"rps": direct}, "twitcher": {"rps": proxied}, "twitcher_ops": {"rps": ops},
                "ratio": proxied / direct, "ops_ratio": ops / proxied}

    results = {
        "requests": {"getcaps": rows(1000, 400, 390), "execute_get": rows(1000, 399, 399),
                     "execute_post": rows(1000, 450, 420), "rejected": rows(1000, 299, 299),
                     "execute_raw": rows(1000, 100, 100), "getmap": rows(1000, 300, 300)},
        "download": {"size_mb": 200, "direct_mb_s": 1000.0, "twitcher_mb_s": 600.0, "ratio": 0.6,
                     "twitcher_sha256_ok": True, "twitcher_peak_rss_growth_mb": 40.0,
                     "twitcher_ops_mb_s": 600.0, "ops_ratio": 1.0, "twitcher_ops_sha256_ok": False},
        "tokens": [{"size": 1000, "median_us": 20.0}, {"size": 10**6, "median_us": 25.0}],
    }
    verdicts = [c["ok"] for c in report.evaluate(results)]
    # Ratios to direct (6), download ratio and memory, metrics + log on / off (6, then the
    # download, whose checksum is wrong), token cost.
    assert verdicts == [True, False, True, False, False, True, True, False,
                        True, True, False, True, True, True, False, True]


def test_evaluate_flags_the_targets_of_the_nginx_data_plane():
    def rows(direct, python, nginx):
        return {"direct": {"rps": direct}, "twitcher": {"rps": python}, "twitcher_nginx": {"rps": nginx},
                "ratio": python / direct, "nginx_ratio": nginx / direct, "nginx_vs_python": nginx / python}

    results = {
        "requests": {"getcaps": rows(1000, 400, 370), "execute_get": rows(1000, 399, 650),
                     "execute_post": rows(1000, 450, 450), "rejected": rows(1000, 299, 299),
                     "execute_raw": rows(1000, 399, 650), "getmap": rows(1000, 300, 590)},
        "download": {"size_mb": 200, "direct_mb_s": 1000.0, "twitcher_mb_s": 600.0, "ratio": 0.6,
                     "twitcher_sha256_ok": True, "twitcher_peak_rss_growth_mb": 10.0,
                     "twitcher_nginx_mb_s": 760.0, "nginx_plain_mb_s": 800.0, "nginx_vs_plain": 0.95,
                     "twitcher_nginx_sha256_ok": True, "twitcher_nginx_cpu_ms_per_100mb": 2.0},
        "tokens": [],
    }
    nginx = {c["target"].split(",")[0]: c["ok"] for c in report.evaluate(results) if "nginx" in c["target"]}
    assert nginx == {"GET Execute": True, "GetMap-like binary GET (64 KiB)": False, "GetCapabilities": False,
                     "200 MB download": True}
    cpu = [c for c in report.evaluate(results) if "CPU" in c["target"]]
    assert cpu[0]["ok"] and cpu[0]["value"] == pytest.approx(4.19, abs=0.01)


def test_nginx_table_sets_the_plane_beside_a_plain_nginx():
    rows = {"direct": {"rps": 1000}, "nginx_plain": {"rps": 900}, "twitcher": {"rps": 400},
            "twitcher_nginx": {"rps": 450, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0,
                               "cpu_ms_per_request": {"twitcher_nginx": 0.3, "nginx": 0.1}},
            "nginx_ratio": 0.45, "nginx_vs_python": 1.125, "plain_ratio": 0.9, "nginx_vs_plain": 0.5}
    lines = report.nginx_markdown({"requests": {"getmap": rows}, "download": {}})
    header = [cell.strip() for cell in lines[1].split("|")]
    row = dict(zip(header, (cell.strip() for cell in lines[3].split("|"))))
    assert row["plain nginx req/s"] == "900" and row["plain nginx / direct"] == "0.90"
    assert row["nginx / plain nginx"] == "0.50" and row["nginx / Python"] == "1.12"


def test_rss_watch_sees_a_process_grow(tmp_path):
    """The download's memory verdict is only worth something if the watch does see growth."""
    import subprocess
    import sys
    import time

    go, ready, stop = (tmp_path / name for name in ("go", "ready", "stop"))
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "block = bytearray(48 * 1024 * 1024)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        f"while not os.path.exists({str(stop)!r}): time.sleep(0.01)\n")])
    try:
        watch = load.RssWatch([child.pid])
        with watch.watch():
            go.touch()
            deadline = time.monotonic() + 20
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        stop.touch()
        child.wait(timeout=20)
    finally:
        child.kill()
    assert 40 * 1024 <= watch.growth_kib <= 64 * 1024


def _outcome(kind: str, answer: str, start: float, seconds: float = 0.01):
    from bench.soak import Outcome
    return Outcome(f"r{start}-{kind}", kind, answer, start, start + seconds)


def test_the_soak_verdict_allows_quick_busy_answers_but_not_other_503s(tmp_path):
    from bench.soak import BUSY, analyse
    record = tmp_path / "record.txt"
    record.write_text("r200.0-valid GET Execute\n")  # the backend saw the one successful Execute
    sent = {"r200.0-valid": "valid"}

    def verdict(outcomes):
        return analyse(outcomes, sent, record, {"start": 100.0, "end": 130.0}, {"start": 1000, "end": 1000},
                       32 * 1024)

    quick_busy = [_outcome("public", BUSY, 10.0), _outcome("valid", BUSY, 11.0),
                  _outcome("valid", "200", 200.0), _outcome("public", "503", 110.0)]
    summary, violations = verdict(quick_busy)
    assert violations == []
    assert summary["busy_503"] == 2

    def one_violation_says(outcomes, text):
        return any(text in violation for violation in verdict(outcomes)[1])

    assert one_violation_says(quick_busy + [_outcome("public", "503", 20.0)], "public answered 503 outside the outage")
    slow_busy = [_outcome("valid", BUSY, 12.0 + i, seconds=5.0) for i in range(3)]
    assert one_violation_says(quick_busy + slow_busy, "'busy' answers took")
    assert one_violation_says(quick_busy + [_outcome("health", BUSY, 30.0)], "health answered 503-busy")


def test_inprocess_calls_the_application_as_the_server_would(tmp_path):
    from bench import inprocess

    python_app, token = inprocess.build_app("python", tmp_path / "python", "http://127.0.0.1:9")
    # The refusal never reaches the (absent) backend; nor does the nginx plane's hand-off.
    assert inprocess.call(python_app, inprocess.cases("python", token)["rejected"]).startswith("401")
    nginx_app, token = inprocess.build_app("nginx", tmp_path / "nginx", "http://127.0.0.1:9")
    handoff = inprocess.cases("nginx", token)["handoff_getmap"]
    assert inprocess.call(nginx_app, handoff).startswith("200")
    measured = inprocess.cpu_per_request(nginx_app, handoff, requests=20, threads=2)
    assert measured["cpu_ms"] > 0 and measured["rps"] > 0


def test_compare_exports_a_commit_whose_package_shadows_the_installed_one(tmp_path):
    import subprocess
    import sys

    from bench import compare

    tree = compare.export_tree("HEAD", tmp_path / "base")
    assert (tree / "production.ini").is_file() and (tree / "twitcher" / "__init__.py").is_file()
    found = subprocess.run([sys.executable, "-c", "import twitcher; print(twitcher.__file__)"], cwd=tmp_path,
                           env={"PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True).stdout
    assert found.strip() == str(tree / "twitcher" / "__init__.py")
