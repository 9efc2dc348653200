"""End to end on 127.0.0.1: HTTP client -> live Twitcher -> real pygeoapi (OGC API - Processes)."""
from __future__ import annotations

import time

import pytest
import requests

from tests.servers import serve_twitcher
from twitcher.services import service_from_registration
from twitcher.store import open_store
from twitcher.tokens import new_token

TIMEOUT = 30
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def twitcher(tmp_path_factory, pygeoapi_server):
    """A live Twitcher with pygeoapi registered as ``geo`` (type ogcapi); yields (base URL, store)."""
    _, backend_url = pygeoapi_server
    db_url = f"sqlite:///{tmp_path_factory.mktemp('twitcher-ogcapi')}/twitcher.sqlite"
    store = open_store(db_url)
    store.save_service(service_from_registration(backend_url, {"name": "geo", "type": "ogcapi"}))
    settings = {"twitcher.db_url": db_url, "twitcher.password": "e2e-admin-password",
                "twitcher.proxy_timeout": "2 30"}
    with serve_twitcher(settings) as base_url:
        yield base_url, store
    store.close()


@pytest.fixture(scope="module")
def api(twitcher) -> str:
    """The proxy URL of the pygeoapi landing page."""
    return twitcher[0] + "/ows/proxy/geo"


def make_token(store, subject=None) -> str:
    token, record = new_token(1, subject=subject)
    store.save_token(record)
    return token


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def hrefs(document) -> list:
    return [link["href"] for link in document.get("links", [])]


@pytest.mark.parametrize("path", ["", "/", "/conformance", "/processes", "/processes/hello-world"])
@pytest.mark.parametrize("form", ["json", "html"])
def test_reading_the_api_is_public(api, path, form):
    answer = requests.get(f"{api}{path}", params={"f": form}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text[:300]


def test_landing_page_and_process_list_link_through_the_proxy(api, pygeoapi_server):
    _, backend_url = pygeoapi_server
    for path in ("", "/processes", "/processes/hello-world"):
        answer = requests.get(f"{api}{path}?f=json", timeout=TIMEOUT)
        assert answer.headers["Content-Type"].startswith("application/json")
        assert backend_url not in answer.text
        links = hrefs(answer.json())
        assert links and all(h.startswith(api) or not h.startswith("http://127.0.0.1") for h in links)
        assert any(h.startswith(api) for h in links)
    # Every link followed through the proxy answers (the rewriting maps back to the backend).
    for href in hrefs(requests.get(f"{api}/processes?f=json", timeout=TIMEOUT).json()):
        if href.startswith(api):
            assert requests.get(href, timeout=TIMEOUT).status_code == 200, href


def test_execution_without_token_is_a_problem_and_never_reaches_the_backend(api, pygeoapi_server):
    backend, _ = pygeoapi_server
    before = len(backend.seen("/execution"))
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "nobody"}},
                           timeout=TIMEOUT)
    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    problem = answer.json()
    assert problem["status"] == 401 and problem["title"] == "Unauthorized" and problem["detail"]
    assert len(backend.seen("/execution")) == before


def test_execution_with_a_token_runs(api, twitcher):
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "Ada"}},
                           headers=bearer(make_token(twitcher[1])), timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == "Hello Ada!"


def test_bad_token_is_a_401_problem(api):
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "x"}},
                           headers=bearer("not-a-token"), timeout=TIMEOUT)
    assert answer.status_code == 401 and answer.json()["detail"] == "The access token is unknown."


def test_unknown_service_is_a_404_problem_for_a_json_client(twitcher):
    answer = requests.get(f"{twitcher[0]}/ows/proxy/nothere/processes",
                          headers={"Accept": "application/json"}, timeout=TIMEOUT)
    assert answer.status_code == 404 and answer.headers["Content-Type"] == PROBLEM
    assert answer.json()["status"] == 404


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/processes/hello-world"),
                                              ("PUT", "/processes/hello-world"),
                                              ("POST", "/processes"),
                                              ("GET", "/not-in-the-table")])
def test_anything_else_needs_a_token(api, method, path):
    answer = requests.request(method, f"{api}{path}", timeout=TIMEOUT)
    assert answer.status_code == 401 and answer.headers["Content-Type"] == PROBLEM


def test_unsupported_method_is_a_405_problem(api):
    answer = requests.request("TRACE", f"{api}/processes", timeout=TIMEOUT)
    assert answer.status_code == 405 and answer.headers["Content-Type"] == PROBLEM


def test_path_leaving_the_api_is_refused(api, twitcher):
    answer = requests.get(f"{api}/processes/%2e%2e/%2e%2e/x", headers=bearer(make_token(twitcher[1])),
                          timeout=TIMEOUT)
    assert answer.status_code == 400 and answer.headers["Content-Type"] == PROBLEM


def test_async_job_location_and_links_lead_through_the_proxy(api, twitcher):
    token = make_token(twitcher[1], subject="carol")
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "Carol"}},
                           headers={**bearer(token), "Prefer": "respond-async"}, timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    location = answer.headers["Location"]
    assert location.startswith(api + "/jobs/")
    status = wait_for_job(location, token)
    assert all(h.startswith(api) for h in hrefs(status) if "/jobs/" in h)
    results = requests.get(location + "/results?f=json", headers=bearer(token), timeout=TIMEOUT)
    assert results.status_code == 200 and results.json()["value"] == "Hello Carol!"


def wait_for_job(location: str, token: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = requests.get(location + "?f=json", headers=bearer(token), timeout=TIMEOUT)
        assert status.status_code == 200, status.text
        document = status.json()
        if document["status"] in ("successful", "failed") or time.monotonic() > deadline:
            assert document["status"] == "successful", document
            return document
        time.sleep(0.1)
