"""The OGC API classification table (twitcher/ogcapi/routes.py): method + path decide, nothing else."""
from __future__ import annotations

import pytest

from twitcher.ogcapi.routes import (
    EXECUTE,
    JOB,
    JOB_LIST,
    OTHER,
    PUBLIC,
    TOKEN,
    Route,
    classify,
    parse_rules,
    template_matches,
)


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/", Route(PUBLIC)),
    ("GET", "", Route(PUBLIC)),
    ("HEAD", "/", Route(PUBLIC)),
    ("GET", "/conformance", Route(PUBLIC)),
    ("GET", "/api", Route(PUBLIC)),
    ("GET", "/openapi", Route(PUBLIC)),
    ("GET", "/processes", Route(PUBLIC, operation="getcapabilities")),
    ("GET", "/processes/", Route(PUBLIC, operation="getcapabilities")),
    ("GET", "/processes/hello-world", Route(PUBLIC, operation="describeprocess")),
    ("GET", "/collections", Route(PUBLIC)),
    ("GET", "/collections/obs", Route(PUBLIC)),
    ("GET", "/collections/obs/items", Route(PUBLIC, operation="getfeature")),
    ("HEAD", "/collections/obs/items/obs-1", Route(PUBLIC, operation="getfeature")),
    ("GET", "/collections/obs/queryables", Route(PUBLIC)),
    ("GET", "/Processes", Route(PUBLIC, operation="getcapabilities")),  # literal segments ignore case
    ("POST", "/processes/hello-world/execution", Route(TOKEN, EXECUTE, operation="execute")),
    ("GET", "/processes/hello-world/execution", Route(TOKEN)),
    ("POST", "/processes", Route(TOKEN)),                       # Part 2: deploy
    ("PUT", "/processes/hello-world", Route(TOKEN)),            # Part 2: replace
    ("DELETE", "/processes/hello-world", Route(TOKEN)),         # Part 2: undeploy
    ("POST", "/collections/obs/items", Route(TOKEN)),           # Features Part 4: create
    ("PUT", "/collections/obs/items/obs-1", Route(TOKEN)),
    ("PATCH", "/collections/obs/items/obs-1", Route(TOKEN)),
    ("DELETE", "/collections/obs/items/obs-1", Route(TOKEN)),
    ("OPTIONS", "/processes", Route(TOKEN)),
    ("GET", "/collections/obs/tiles", Route(TOKEN)),            # not in the table: fail closed
    ("GET", "/collections/obs/items/obs-1/extra", Route(TOKEN)),
    ("GET", "/collections//items", Route(TOKEN)),               # an empty segment is no {collectionId}
    ("GET", "/jobs", Route(TOKEN, JOB_LIST)),
    ("GET", "/jobs/", Route(TOKEN, JOB_LIST)),
    ("GET", "/jobs/j1", Route(TOKEN, JOB, "j1", "getstatus")),
    ("GET", "/jobs/j1/results", Route(TOKEN, JOB, "j1", "getresult")),
    ("DELETE", "/jobs/j1", Route(TOKEN, JOB, "j1", "dismiss")),
    ("GET", "/JOBS/j1/results/out", Route(TOKEN, JOB, "j1", "getresult")),
    ("POST", "/jobs/j1/results", Route(TOKEN, JOB, "j1")),      # no operation: unrestricted tokens only
    ("GET", "/jobs/j1/other", Route(TOKEN, JOB, "j1")),
    ("GET", "/jobs;x/j1", Route(TOKEN, JOB, "j1", "getstatus")),  # Tomcat drops ;x: so do we
    ("GET", "/jobs;x", Route(TOKEN, JOB_LIST)),
    ("GET", "/jobs/j1;x", Route(TOKEN, JOB, "j1;x", "getstatus")),  # not a job id we record: refused later
    ("GET", "/processes;x", Route(PUBLIC, operation="getcapabilities")),
    ("GET", "/collections/;x/items", Route(TOKEN)),
])
def test_default_table(method, path, expected):
    assert classify(method, path) == expected


def test_query_string_is_not_part_of_the_decision():
    # The tween passes the path only: ?f=json and ?f=html are the same request for access.
    assert classify("GET", "/processes") == Route(PUBLIC, operation="getcapabilities")


def test_operator_rules_come_first_and_can_open_or_close():
    rules = parse_rules("public GET,HEAD /collections/{c}/tiles/**\ntoken GET /processes/{p}")
    assert classify("GET", "/collections/obs/tiles/WebMercatorQuad/0/0/0", rules) == Route(PUBLIC)
    assert classify("GET", "/collections/obs/tiles", rules) == Route(PUBLIC)
    assert classify("POST", "/collections/obs/tiles", rules) == Route(TOKEN)
    assert classify("GET", "/processes/hello-world", rules) == Route(TOKEN, operation="describeprocess")
    assert classify("GET", "/processes", rules) == Route(PUBLIC, operation="getcapabilities")


def test_no_rule_makes_jobs_public():
    rules = parse_rules("public GET,HEAD,POST,PUT,PATCH,DELETE /**")
    assert classify("GET", "/anything", rules) == Route(PUBLIC)
    assert classify("GET", "/jobs", rules) == Route(TOKEN, JOB_LIST)
    assert classify("GET", "/jobs/1/results", rules) == Route(TOKEN, JOB, "1", "getresult")


@pytest.mark.parametrize("text", [
    "public GET",                    # no template
    "open GET /x",                   # unknown access level
    "public FETCH /x",               # unknown method
    "public GET x",                  # not absolute
    "public GET /a/**/b",            # ** only at the end
    "public GET /a/{b",              # broken parameter
])
def test_bad_rules_are_refused(text):
    with pytest.raises(ValueError):
        parse_rules(text)


def test_rules_may_be_separated_by_semicolons_and_blank_lines():
    assert len(parse_rules("\n public GET /a ; token POST,PUT /b/{x}\n\n")) == 2


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("/a/{x}", "/a/1", True),
    ("/a/{x}", "/a", False),
    ("/a/{x}", "/a/1/2", False),
    ("/a/**", "/a", True),
    ("/a/**", "/a/1/2", True),
    ("/a/**", "/b/1", False),
    ("/", "/", True),
    ("/", "/a", False),
])
def test_template_matching(template, path, expected):
    assert template_matches(template, path) is expected


def test_other_kind_for_plain_requests():
    assert classify("GET", "/collections").kind == OTHER


def test_a_bad_rule_in_the_settings_stops_start_up_naming_the_key():
    from twitcher.exceptions import ConfigurationError
    from twitcher.settings import parse_settings

    with pytest.raises(ConfigurationError, match="twitcher.ogcapi_public"):
        parse_settings({"twitcher.password": "x", "twitcher.ogcapi_public": "public GET tiles"}, environ={})
    settings = parse_settings({"twitcher.password": "x", "twitcher.ogcapi_public": "public GET /tiles/**"},
                              environ={})
    assert classify("GET", "/tiles/1/2", settings.ogcapi_public) == Route(PUBLIC)
