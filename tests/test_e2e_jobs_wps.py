"""End to end: private WPS 1.0 jobs. OWSLib -> live Twitcher -> real PyWPS, asynchronous Execute.

The owner of a job is the subject of the token that ran Execute; its status document and its
outputs (``outputs/<job>.xml``, ``outputs/<job>/...``) answer only tokens of that subject.
"""
from __future__ import annotations

import time
from typing import Iterator

import pytest
import requests
from owslib.wps import ASYNC, WebProcessingService

from tests.pywps_backend import PyWPSBackend
from tests.servers import RunningTwitcher, running_twitcher, serve_wsgi

TIMEOUT = 30


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    wps = PyWPSBackend(tmp_path_factory.mktemp("pywps-jobs"))
    with serve_wsgi(wps) as base_url:
        wps.configure(base_url)
        yield wps, base_url


@pytest.fixture(scope="module")
def twitcher(tmp_path_factory, backend) -> Iterator[RunningTwitcher]:
    """A live Twitcher with the PyWPS backend as ``emu``."""
    _, backend_url = backend
    with running_twitcher(tmp_path_factory.mktemp("twitcher-jobs"), [(backend_url + "/wps", {"name": "emu"})]) as live:
        yield live


@pytest.fixture(scope="module")
def proxy(twitcher) -> str:
    """The proxy URL of ``emu``."""
    return twitcher.proxy("emu")


@pytest.fixture(scope="module")
def tokens(twitcher):
    return {"alice": twitcher.token(subject="alice"), "alice2": twitcher.token(subject="alice"),
            "bob": twitcher.token(subject="bob")}


def run_async(proxy_url: str, token: str):
    wps = WebProcessingService(proxy_url, version="1.0.0", skip_caps=True, timeout=TIMEOUT,
                               headers={"Access-Token": token})
    execution = wps.execute("bigfile", [("size_mb", "1")], output=[("file", True)], mode=ASYNC)
    assert execution.statusLocation.startswith(proxy_url + "/outputs/")
    deadline = time.monotonic() + TIMEOUT
    while not execution.isComplete():
        assert time.monotonic() < deadline, "the async job did not finish in time"
        execution.checkStatus(sleepSecs=0.2)
    assert execution.isSucceded(), execution.errors
    reference = [o for o in execution.processOutputs if o.identifier == "file"][0].reference
    return execution.statusLocation, reference


def test_status_and_outputs_answer_only_the_owner(proxy, tokens, backend):
    wps, _ = backend
    status_url, reference = run_async(proxy, tokens["alice"])
    assert reference.startswith(proxy + "/outputs/")
    for url in (status_url, reference):
        mine = requests.get(url, headers={"Authorization": f"Bearer {tokens['alice2']}"}, timeout=TIMEOUT)
        assert mine.status_code == 200, url
    mark = len(wps.requests)
    for url in (status_url, reference):
        theirs = requests.get(url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=TIMEOUT)
        assert theirs.status_code == 403, url
        assert theirs.headers["Content-Type"].startswith("text/xml")  # an OWS ExceptionReport
        assert b"ExceptionReport" in theirs.content
        assert requests.get(url, timeout=TIMEOUT).status_code == 401
    assert wps.requests[mark:] == [], "a refused request reached the backend"


def test_each_subject_reads_its_own_jobs(proxy, tokens):
    alice_status, _ = run_async(proxy, tokens["alice"])
    bob_status, bob_reference = run_async(proxy, tokens["bob"])
    assert requests.get(bob_status, headers={"Access-Token": tokens["bob"]}, timeout=TIMEOUT).status_code == 200
    assert requests.get(bob_reference, headers={"Access-Token": tokens["alice"]}, timeout=TIMEOUT).status_code == 403
    assert requests.get(alice_status, headers={"Access-Token": tokens["bob"]}, timeout=TIMEOUT).status_code == 403
