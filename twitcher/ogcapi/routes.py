"""Which OGC API requests need a token: a table of method + path-template rules, and one function.

The decision never looks at the body or the query string (so ``?f=json`` and ``?f=html`` are the
same request as far as access goes): a proxy that reads bodies to decide can be fooled by a
body the backend reads differently. Order of the decision, first match wins:

1. ``/jobs`` and everything below it, any method: a token, and for ``/jobs/{jobId}[/...]`` the
   token's owner must be the job's owner (:mod:`twitcher.jobs`). No rule can make jobs public.
2. The operator's rules (``twitcher.ogcapi_public``), in the order written.
3. :data:`DEFAULT_RULES`: reading the API description, processes and collections is public.
4. Anything else needs a token: execution, deploy/undeploy, Features transactions, any path
   the table does not know. Fail closed: an unknown path is a protected path.

Literal segments match without regard to letter case (a backend may not care either, and a
job path spelt ``/JOBS/1`` must not escape the owner check), and without the path parameters
that servlet containers cut off (``/jobs;x/1`` is ``/jobs/1`` to Tomcat, so it is to us); a
trailing ``/`` is ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple

#: Access levels of a rule.
PUBLIC = "public"
TOKEN = "token"  # noqa: S105 - an access level, not a secret
ACCESS_LEVELS = (PUBLIC, TOKEN)
#: What a request means for job ownership (``Route.kind``).
JOB = "job"          # /jobs/{jobId}[/...]: the owner only
JOB_LIST = "jobs"    # /jobs: answered filtered to the caller's jobs
EXECUTE = "execute"  # POST /processes/{processId}/execution: the answer may create a job
OTHER = "other"

_READ = frozenset({"GET", "HEAD"})
_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
#: The last segment of a template that matches the rest of the path, zero segments or more.
ANY_DEPTH = "**"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _segments(path: str) -> list:
    return path.split("/")[1:] if path != "/" else []


def _without_parameters(segment: str) -> str:
    """A path segment without its ``;parameters`` (RFC 3986 3.3), as servlet containers read it."""
    return segment.split(";", 1)[0]


def _good_template(template: str) -> bool:
    if not template.startswith("/"):
        return False
    segments = _segments(normalise_path(template))
    for index, segment in enumerate(segments):
        if not segment or ("{" in segment or "}" in segment) and not _PARAM.match(segment):
            return False
        if segment == ANY_DEPTH and index != len(segments) - 1:
            return False
    return True


def normalise_path(path: str) -> str:
    """``path`` as the table compares it: a leading ``/``, no trailing ``/`` except the root."""
    path = "/" + path.lstrip("/")
    return path.rstrip("/") or "/"


def template_matches(template: str, path: str) -> bool:
    """True when ``path`` (normalised) fits ``template``: ``{x}`` is one non-empty segment, a final
    ``**`` any number of segments, other segments literal (letter case ignored)."""
    want = _segments(normalise_path(template))
    have = [_without_parameters(s) for s in _segments(normalise_path(path))]
    if want and want[-1] == ANY_DEPTH:
        want = want[:-1]
        if len(have) < len(want):
            return False
        have = have[: len(want)]
    if len(want) != len(have):
        return False
    return all(bool(h) and (_PARAM.match(w) or w.lower() == h.lower()) for w, h in zip(want, have))


@dataclass(frozen=True)
class Rule:
    """``methods`` on paths matching ``template`` need ``access`` (``public`` or ``token``)."""

    methods: FrozenSet[str]
    template: str
    access: str

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"access must be public or token, got {self.access!r}")
        unknown = sorted(set(self.methods) - METHODS)
        if unknown or not self.methods:
            raise ValueError(f"unknown HTTP method {unknown[0] if unknown else '(none)'} in rule for {self.template}")
        if not _good_template(self.template):
            raise ValueError(f"bad path template {self.template!r}: "
                             "use /literal/{name}/... and an optional final /**")

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and template_matches(self.template, path)


@dataclass(frozen=True)
class Route:
    """The classification of one request: its access level, what it means for jobs, the job id,
    and the OWS operation it stands for (:data:`OPERATIONS`), if any."""

    access: str
    kind: str = OTHER
    job_id: Optional[str] = None
    operation: Optional[str] = None


def _rule(methods: str, template: str, access: str = PUBLIC) -> Rule:
    return Rule(frozenset(methods.split()), template, access)


#: Public by default: reading the API, its processes and its feature collections (issue 13).
DEFAULT_RULES: Tuple[Rule, ...] = tuple(_rule("GET HEAD", t) for t in (
    "/",
    "/conformance",
    "/api",
    "/openapi",
    "/processes",
    "/processes/{processId}",
    "/collections",
    "/collections/{collectionId}",
    "/collections/{collectionId}/items",
    "/collections/{collectionId}/items/{featureId}",
    "/collections/{collectionId}/queryables",
))


#: The OWS operation an OGC API request stands for, by method and path template: what a signed
#: token narrowed to operations (``docs/federation.rst``) is judged by, so that one token narrowed
#: to ``execute`` runs jobs on a WPS and on an OGC API - Processes alike. Processes mirrors WPS 2.0
#: (Execute, GetStatus, GetResult, Dismiss), Features the WFS GetFeature. Any other request stands
#: for no operation, and only tokens without an operation restriction pass there (fail closed).
OPERATIONS: Tuple[Tuple[FrozenSet[str], str, str], ...] = (
    (frozenset({"POST"}), "/processes/{processId}/execution", "execute"),
    (_READ, "/processes", "getcapabilities"),
    (_READ, "/processes/{processId}", "describeprocess"),
    (_READ, "/jobs/{jobId}", "getstatus"),
    (_READ, "/jobs/{jobId}/results/" + ANY_DEPTH, "getresult"),
    (frozenset({"DELETE"}), "/jobs/{jobId}", "dismiss"),
    (_READ, "/collections/{collectionId}/items", "getfeature"),
    (_READ, "/collections/{collectionId}/items/{featureId}", "getfeature"),
)


def operation_of(method: str, path: str) -> Optional[str]:
    """The OWS operation of ``method`` on ``path`` (normalised, below the landing page), or None."""
    return next((name for methods, template, name in OPERATIONS
                 if method in methods and template_matches(template, path)), None)


def classify(method: str, path: str, extra_rules: Sequence[Rule] = ()) -> Route:
    """The :class:`Route` of ``method`` on ``path`` (the path below the API's landing page).

    ``extra_rules`` are the operator's rules (``twitcher.ogcapi_public``), tried before the defaults.
    """
    method = method.upper()
    path = normalise_path(path)
    segments = _segments(path)
    operation = operation_of(method, path)
    if segments and _without_parameters(segments[0]).lower() == "jobs":
        if len(segments) == 1:
            return Route(TOKEN, JOB_LIST)
        return Route(TOKEN, JOB, job_id=segments[1], operation=operation)
    kind = EXECUTE if operation == "execute" else OTHER
    for rule in (*extra_rules, *DEFAULT_RULES):
        if rule.matches(method, path):
            return Route(rule.access, kind, operation=operation)
    return Route(TOKEN, kind, operation=operation)


def parse_rules(text: str) -> Tuple[Rule, ...]:
    """Parse ``twitcher.ogcapi_public``: one rule per line (or separated by ``;``), each
    ``public|token METHOD[,METHOD...] /path/{template}``, e.g. ``public GET,HEAD /collections/{c}/tiles/**``.

    Raises ValueError naming the bad rule.
    """
    rules = []
    for line in re.split(r"[\n;]", text):
        words = line.split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(f"expected 'public|token METHODS /template', got {line.strip()!r}")
        access, methods, template = words
        try:
            rules.append(Rule(frozenset(m.upper() for m in methods.split(",") if m), template, access.lower()))
        except ValueError as exc:
            raise ValueError(f"{exc} (in {line.strip()!r})") from None
    return tuple(rules)


def describe_rules(rules: Sequence[Rule]) -> list:
    """``(methods, template, access)`` rows for documentation, methods in a stable order."""
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [(" ".join(m for m in order if m in r.methods), r.template, r.access) for r in rules]
