"""Job owners (twitcher/jobs.py): who owns what, how answers announce jobs, how lists are filtered."""
from __future__ import annotations

import json

import pytest

from twitcher.exceptions import Forbidden
from twitcher.jobs import (
    answer_inspector,
    check_ogcapi_job,
    check_wps_path,
    filter_job_list,
    new_record,
    ogcapi_created_jobs,
    ogcapi_job_id,
    owner_of,
    wps_created_jobs,
    wps_job_candidates,
)
from twitcher.store import open_store
from twitcher.tokens import new_token

ROOT = "http://h:5000/api/"


@pytest.fixture
def store():
    backend = open_store("sqlite://")
    yield backend
    backend.close()


def token(subject=None):
    return new_token(1, subject=subject)[1]


def test_owner_is_the_subject_or_the_token_itself():
    alice1, alice2, plain = token("alice"), token("alice"), token()
    assert owner_of(alice1) == owner_of(alice2) == "subject:alice"
    assert owner_of(plain) == f"token:{plain.digest}" != owner_of(token())


@pytest.mark.parametrize(("location", "expected"), [
    ("http://h:5000/api/jobs/abc-1", "abc-1"),
    ("http://H:5000/api/jobs/abc-1/", "abc-1"),
    ("http://h:5000/api/jobs/abc-1/results", None),
    ("http://h:5000/api/jobs", None),
    ("http://h:5000/other/jobs/abc", None),
    ("http://evil:5000/api/jobs/abc", None),
    ("http://h:5000/api/jobs/..", None),
    (None, None),
])
def test_job_id_from_a_location(location, expected):
    assert ogcapi_job_id(location, ROOT) == expected


def test_created_jobs_from_location_and_body():
    assert ogcapi_created_jobs(201, ROOT + "jobs/j1", b"null", ROOT) == ["j1"]
    assert ogcapi_created_jobs(200, None, b'{"jobID": "j2", "status": "accepted"}', ROOT) == ["j2"]
    assert ogcapi_created_jobs(201, ROOT + "jobs/j1", b'{"jobID": "j1"}', ROOT) == ["j1"]
    assert ogcapi_created_jobs(400, ROOT + "jobs/j1", b'{"jobID": "j1"}', ROOT) == []
    assert ogcapi_created_jobs(200, None, b"not json", ROOT) == []


WPS10 = (b'<wps:ExecuteResponse xmlns:wps="http://www.opengis.net/wps/1.0.0" '
         b'statusLocation="http://h:5000/outputs/1b4e28ba-2fa1-11d2-883f-0016d3cca427.xml"/>')
WPS20 = (b'<wps:StatusInfo xmlns:wps="http://www.opengis.net/wps/2.0"><wps:JobID>job-7</wps:JobID>'
         b'<wps:Status>Accepted</wps:Status></wps:StatusInfo>')


def test_created_jobs_from_wps_answers():
    assert wps_created_jobs(200, WPS10) == ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
    assert wps_created_jobs(200, WPS20) == ["job-7"]
    assert wps_created_jobs(200, b'<wps:ExecuteResponse xmlns:wps="http://www.opengis.net/wps/1.0.0"/>') == []
    assert wps_created_jobs(200, b"<broken") == []
    assert wps_created_jobs(200, b'<x statusLocation="http://h/outputs/a.xml"/>') == []


def test_wps_candidates_are_segments_and_their_stems():
    assert wps_job_candidates("outputs/abc.xml") == ["outputs", "abc.xml", "abc"]
    assert wps_job_candidates("outputs/abc/file.nc") == ["outputs", "abc", "file.nc", "file"]


def test_only_the_owner_passes_and_an_unrecorded_ogcapi_job_is_refused(store):
    alice, bob = token("alice"), token("bob")
    store.save_job(new_record("geo", "j1", alice, 1))
    check_ogcapi_job(store, "geo", "j1", token("alice"))
    for who in (bob, None):
        with pytest.raises(Forbidden):
            check_ogcapi_job(store, "geo", "j1", who)
    with pytest.raises(Forbidden):
        check_ogcapi_job(store, "geo", "unknown", alice)
    with pytest.raises(Forbidden):
        check_ogcapi_job(store, "other", "j1", alice)


def test_wps_paths_of_recorded_jobs_answer_only_the_owner(store):
    alice, bob = token("alice"), token("bob")
    store.save_job(new_record("emu", "abc", alice, 1))
    check_wps_path(store, "emu", "outputs/abc.xml", alice)
    check_wps_path(store, "emu", "outputs/unrelated.nc", bob)
    for path in ("outputs/abc.xml", "outputs/abc/file.nc"):
        with pytest.raises(Forbidden):
            check_wps_path(store, "emu", path, bob)


def test_job_list_is_filtered_to_the_callers_jobs(store):
    alice = token("alice")
    store.save_job(new_record("geo", "a1", alice, 1))
    store.save_job(new_record("geo", "b1", token("bob"), 1))
    body = json.dumps({"jobs": [{"jobID": "a1"}, {"jobID": "b1"}, {"jobID": "x"}], "numberMatched": 3,
                       "links": []}).encode()
    filtered = json.loads(filter_job_list(body, "geo", store, token("alice")))
    assert filtered == {"jobs": [{"jobID": "a1"}], "numberMatched": 1, "links": []}


@pytest.mark.parametrize("body", [b"<html/>", b'{"jobs": "a"}', b'{"jobs": [{"id": "a"}]}', b"[]"])
def test_a_job_list_that_cannot_be_filtered_is_none(store, body):
    assert filter_job_list(body, "geo", store, token("alice")) is None


def test_the_inspector_refuses_an_unfilterable_list_and_records_executions(store):
    alice = token("alice")
    listing = answer_inspector("jobs", "geo", alice, store, 1, ROOT)
    with pytest.raises(Forbidden):
        listing(200, [], None)
    assert listing(404, [], b"not found") == b"not found"
    execute = answer_inspector("execute", "geo", alice, store, 1, ROOT)
    assert execute(201, [("Location", ROOT + "jobs/new-1")], None) is None
    assert store.fetch_jobs("geo", ["new-1"])["new-1"].owner == "subject:alice"
    assert answer_inspector("execute", "geo", None, store, 1, ROOT) is None
