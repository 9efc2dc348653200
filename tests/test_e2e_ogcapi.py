"""End to end on 127.0.0.1: HTTP client -> live Twitcher -> real pygeoapi (OGC API - Processes)."""
from __future__ import annotations

import time
from typing import Iterator

import pytest
import requests

from tests.servers import RunningTwitcher, running_twitcher

TIMEOUT = 30
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def twitcher(tmp_path_factory, pygeoapi_server) -> Iterator[RunningTwitcher]:
    """A live Twitcher with pygeoapi registered as ``geo`` (type ogcapi)."""
    _, backend_url = pygeoapi_server
    services = [(backend_url, {"name": "geo", "type": "ogcapi"})]
    with running_twitcher(tmp_path_factory.mktemp("twitcher-ogcapi"), services,
                          settings={"twitcher.proxy_timeout": "2 30"}) as live:
        yield live


@pytest.fixture(scope="module")
def api(twitcher) -> str:
    """The proxy URL of the pygeoapi landing page."""
    return twitcher.proxy("geo")


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
                           headers=bearer(twitcher.token()), timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == "Hello Ada!"


def test_bad_token_is_a_401_problem(api):
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": "x"}},
                           headers=bearer("not-a-token"), timeout=TIMEOUT)
    assert answer.status_code == 401 and answer.json()["detail"] == "The access token is unknown."


def test_unknown_service_is_a_404_problem_for_a_json_client(twitcher):
    answer = requests.get(twitcher.proxy("nothere") + "/processes",
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
    answer = requests.get(f"{api}/processes/%2e%2e/%2e%2e/x", headers=bearer(twitcher.token()),
                          timeout=TIMEOUT)
    assert answer.status_code == 400 and answer.headers["Content-Type"] == PROBLEM


def test_async_job_location_and_links_lead_through_the_proxy(api, twitcher):
    token = twitcher.token(subject="carol")
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


# -- private jobs -------------------------------------------------------------------------------

def start_job(api: str, token: str, name: str) -> str:
    answer = requests.post(f"{api}/processes/hello-world/execution", json={"inputs": {"name": name}},
                           headers={**bearer(token), "Prefer": "respond-async"}, timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    return answer.headers["Location"]


@pytest.fixture(scope="module")
def people(twitcher):
    """Two tokens of alice, one of bob, one without a subject."""
    return {"alice": twitcher.token(subject="alice"), "alice2": twitcher.token(subject="alice"),
            "bob": twitcher.token(subject="bob"), "anonymous": twitcher.token()}


def test_a_job_answers_its_owner_under_any_of_her_tokens_and_nobody_else(api, people, pygeoapi_server):
    backend, _ = pygeoapi_server
    location = start_job(api, people["alice"], "Alice")
    job_path = location[len(api):]
    status = wait_for_job(location, people["alice2"])
    assert status["jobID"] == job_path.rsplit("/", 1)[1]
    results = requests.get(location + "/results?f=json", headers=bearer(people["alice2"]), timeout=TIMEOUT)
    assert results.json()["value"] == "Hello Alice!"

    seen = len(backend.seen(job_path))
    for path in ("", "/results", "?f=json", "/results?f=json"):
        for who in ("bob", "anonymous"):
            refused = requests.get(location + path, headers=bearer(people[who]), timeout=TIMEOUT)
            assert refused.status_code == 403, (path, who)
            assert refused.headers["Content-Type"] == PROBLEM and refused.json()["status"] == 403
    refused = requests.delete(location, headers=bearer(people["bob"]), timeout=TIMEOUT)
    assert refused.status_code == 403
    assert requests.get(location, timeout=TIMEOUT).status_code == 401
    assert len(backend.seen(job_path)) == seen, "a refused request reached the backend"


def test_a_token_without_subject_owns_only_its_own_jobs(api, people, twitcher):
    location = start_job(api, people["anonymous"], "Nobody")
    wait_for_job(location, people["anonymous"])
    other = twitcher.token()
    assert requests.get(location, headers=bearer(other), timeout=TIMEOUT).status_code == 403
    assert requests.get(location, headers=bearer(people["alice"]), timeout=TIMEOUT).status_code == 403


def test_job_list_shows_only_the_callers_jobs(api, people):
    mine = {start_job(api, people["alice"], "A").rsplit("/", 1)[1] for _ in range(2)}
    theirs = start_job(api, people["bob"], "B").rsplit("/", 1)[1]
    listed = requests.get(f"{api}/jobs?f=json", headers=bearer(people["alice2"]), timeout=TIMEOUT)
    assert listed.status_code == 200, listed.text
    ids = {job["jobID"] for job in listed.json()["jobs"]}
    assert mine <= ids and theirs not in ids
    bobs = requests.get(f"{api}/jobs?f=json", headers=bearer(people["bob"]), timeout=TIMEOUT).json()
    assert {job["jobID"] for job in bobs["jobs"]} == {theirs}
    for job in listed.json()["jobs"]:
        assert all(link["href"].startswith(api) for link in job.get("links", []) if "/jobs/" in link["href"])


def test_job_list_that_cannot_be_filtered_is_refused(api, people):
    answer = requests.get(f"{api}/jobs?f=html", headers=bearer(people["alice"]), timeout=TIMEOUT)
    assert answer.status_code == 403 and answer.headers["Content-Type"] == PROBLEM
    assert requests.get(f"{api}/jobs", timeout=TIMEOUT).status_code == 401


def test_a_job_twitcher_has_no_record_of_is_refused_to_everyone(api, people, pygeoapi_server):
    _, backend_url = pygeoapi_server
    direct = requests.post(f"{backend_url}/processes/hello-world/execution", json={"inputs": {"name": "x"}},
                           headers={"Prefer": "respond-async"}, timeout=TIMEOUT)
    job_id = direct.headers["Location"].rsplit("/", 1)[1]
    for who in ("alice", "bob", "anonymous"):
        answer = requests.get(f"{api}/jobs/{job_id}", headers=bearer(people[who]), timeout=TIMEOUT)
        assert answer.status_code == 403


# -- answers beyond twitcher.rewrite_max_bytes ------------------------------------------------------

@pytest.fixture(scope="module")
def small_limit(twitcher):
    """A second Twitcher on the same store that rewrites nothing over 200 bytes."""
    with twitcher.another({"twitcher.rewrite_max_bytes": "200"}) as base_url:
        yield base_url + "/ows/proxy/geo"


def test_json_beyond_the_limit_is_streamed_as_it_is(small_limit, pygeoapi_server):
    _, backend_url = pygeoapi_server
    answer = requests.get(f"{small_limit}/processes?f=json", timeout=TIMEOUT)
    assert answer.status_code == 200
    assert backend_url + "/processes" in answer.text  # not rewritten: streamed past the limit
    assert int(answer.headers["Content-Length"]) == len(answer.content)


def test_a_job_list_beyond_the_limit_is_refused_not_shown_unfiltered(small_limit, people):
    start_job(small_limit, people["bob"], "B")
    answer = requests.get(f"{small_limit}/jobs?f=json", headers=bearer(people["alice"]), timeout=TIMEOUT)
    assert answer.status_code == 403 and answer.headers["Content-Type"] == PROBLEM
