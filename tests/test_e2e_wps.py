"""OWSLib against the internal WPS over real HTTP: sync and async Execute with a token."""
from __future__ import annotations

import json
import time

import pytest
from owslib.util import ServiceException
from owslib.wps import ASYNC, SYNC, WebProcessingService

from tests.servers import serve_twitcher
from twitcher.tokens import fingerprint, new_token

#: Upper bound for an async job to finish, polled every POLL_SECONDS.
JOB_TIMEOUT = 30.0
POLL_SECONDS = 0.2


@pytest.fixture
def live_wps(app_settings, tmp_path, store):
    """A Twitcher with the demo processes, served on 127.0.0.1 with its own URL; yields (wps_url, token)."""
    token, record = new_token(1, {"DATA_TOKEN": "abc", "DATA_USER": "alice"})
    store.save_token(record)
    with serve_twitcher({**app_settings, "twitcher.wps": "true",
                         "twitcher.wps_processes": "twitcher.wpsprocesses.demo_processes",
                         "twitcher.wps_workdir": str(tmp_path / "wps")}) as base_url:
        yield base_url + "/ows/wps", token


def client(wps_url: str, token: str) -> WebProcessingService:
    return WebProcessingService(wps_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def expected_report() -> dict:
    return {"DATA_TOKEN": "sha256:" + fingerprint("abc"), "DATA_USER": "sha256:" + fingerprint("alice")}


def test_owslib_reads_capabilities_and_descriptions(live_wps):
    wps_url, _ = live_wps
    wps = WebProcessingService(wps_url, timeout=30)
    assert {p.identifier for p in wps.processes} == {"hello", "inspect_environ"}
    assert [o.identifier for o in wps.describeprocess("inspect_environ").processOutputs] == ["report"]


def test_owslib_sync_execute_with_a_token(live_wps):
    wps_url, token = live_wps
    execution = client(wps_url, token).execute("hello", [("name", "OWSLib")], output=[("output", False)],
                                               mode=SYNC)
    assert execution.isSucceded(), execution.errors
    assert execution.processOutputs[0].data == ["Hello OWSLib"]

    execution = client(wps_url, token).execute("inspect_environ", [], output=[("report", False)], mode=SYNC)
    assert execution.isSucceded(), execution.errors
    assert json.loads(execution.processOutputs[0].data[0])["received"] == expected_report()


def test_owslib_async_execute_with_a_token(live_wps):
    wps_url, token = live_wps
    wps = client(wps_url, token)
    execution = wps.execute("inspect_environ", [("delay", "1")], output=[("report", True)], mode=ASYNC)
    assert execution.statusLocation.startswith(wps_url + "/outputs/")

    deadline = time.monotonic() + JOB_TIMEOUT
    while not execution.isComplete():
        assert time.monotonic() < deadline, f"job not complete after {JOB_TIMEOUT} s"
        execution.checkStatus(sleepSecs=POLL_SECONDS)
    assert execution.isSucceded(), execution.errors

    output = execution.processOutputs[0]
    assert output.reference.startswith(wps_url + "/outputs/")
    report = json.loads(output.retrieveData(headers=wps.headers))
    assert report["received"] == expected_report()


def test_owslib_async_execute_without_a_token_is_refused(live_wps):
    wps_url, _ = live_wps
    with pytest.raises(ServiceException, match='locator="access_token"'):
        WebProcessingService(wps_url, timeout=30).execute("inspect_environ", [], mode=ASYNC)
