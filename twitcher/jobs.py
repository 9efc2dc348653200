"""Private jobs: who owns a job, how Twitcher learns it, and who may read it.

The OGC API - Processes standard warns that job ids must not work as capabilities: whoever
learns one could watch someone else's work. So a job belongs to the owner of the token that
created it (its ``subject``, or the token itself when it has none), Twitcher records the owner
when it relays the creation (an answer it sees anyway), and afterwards a job's status, results
and outputs answer only that owner. The rules are in ``docs/ogcapi.rst`` ("Private jobs").

These are plain functions on a store, a token record and what the backend answered; the tween
(:mod:`twitcher.tweens`) refuses before forwarding, the proxy (:mod:`twitcher.proxy.view`) records
and filters on the way back.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import unquote_plus, urlsplit

from lxml import etree

from .exceptions import Forbidden, InvalidParameterValue, MissingParameterValue
from .ows.request import xml_parser
from .tokens import AccessToken, utcnow

log = logging.getLogger(__name__)

#: Job ids Twitcher records: what backends use (UUIDs, slugs), bounded, no path separators.
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")
#: Path segments of a WPS extra path looked at for job ids; deeper paths are rare and still checked.
MAX_SEGMENTS = 16
_WPS_NS = ("http://www.opengis.net/wps/1.0.0", "http://www.opengis.net/wps/2.0")


@dataclass(frozen=True)
class JobRecord:
    """A job Twitcher relayed the creation of: the service, the backend's job id, its owner."""

    service: str
    job_id: str
    owner: str
    expires_at: datetime


def owner_of(token: AccessToken) -> str:
    """The owner a token acts for: its subject, or the token alone (by its digest).

    A signed token (:class:`twitcher.federation.biscuit.Claims`) acts for its issuer's subject,
    kept apart from local subjects (``alice`` of another site is not our ``alice``), or, without
    a subject, for the token it was narrowed from (its first revocation id), so that a holder's
    attenuated copies still reach the jobs the original created.
    """
    issuer = getattr(token, "issuer", None)
    if issuer is not None:
        return f"signed:{issuer}:subject:{token.subject}" if token.subject else \
            f"signed:{issuer}:token:{token.revocation_ids[0]}"
    return f"subject:{token.subject}" if token.subject else f"token:{token.digest}"


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value or ""))


def new_record(service: str, job_id: str, token: AccessToken, retention_hours: float,
               now: Optional[datetime] = None) -> JobRecord:
    return JobRecord(service, job_id, owner_of(token), (now or utcnow()) + timedelta(hours=retention_hours))


# -- before forwarding: who may read a job -------------------------------------------------------

def check_ogcapi_job(store, service: str, job_id: str, token: Optional[AccessToken]) -> None:
    """Refuse (403) unless ``token``'s owner owns job ``job_id`` of ``service``.

    A job without a record is refused too (fail closed, see "Jobs Twitcher has no record of").
    """
    record = store.fetch_jobs(service, [job_id]).get(job_id) if is_job_id(job_id) else None
    if record is None or token is None or record.owner != owner_of(token):
        raise Forbidden("This job belongs to someone else, or Twitcher knows no owner for it.", locator="jobId")


def wps_job_candidates(extra_path: str) -> List[str]:
    """The names in a WPS extra path that may be job ids: each segment, and each without its extension
    (PyWPS: ``outputs/<uuid>.xml`` is the status document, ``outputs/<uuid>/x.nc`` an output)."""
    names = []
    for segment in extra_path.strip("/").split("/")[:MAX_SEGMENTS]:
        for name in (segment, segment.rsplit(".", 1)[0]):
            if is_job_id(name) and name not in names:
                names.append(name)
    return names


def check_wps_path(store, service: str, extra_path: str, token: Optional[AccessToken]) -> None:
    """Refuse (403) an extra path of a WPS service that names a recorded job of someone else."""
    candidates = wps_job_candidates(extra_path)
    if not candidates:
        return
    owner = owner_of(token) if token is not None else None
    for record in store.fetch_jobs(service, candidates).values():
        if record.owner != owner:
            raise Forbidden("This job belongs to someone else.", locator="extra_path")


#: WPS 2.0 requests about one job, named by its ``JobID``.
WPS2_JOB_REQUESTS = frozenset({"getstatus", "getresult", "dismiss"})


def wps2_job_id(query_string: str, body: bytes) -> str:
    """The ``JobID`` of a WPS 2.0 ``GetStatus``/``GetResult``/``Dismiss``: the ``jobid`` parameter
    (any letter case) of a GET, the ``wps:JobID`` element of a POST body. Missing or given twice
    with different values: refused, as what is checked must be what the backend reads."""
    found = [unquote_plus(value) for key, _, value in (p.partition("=") for p in query_string.split("&"))
             if unquote_plus(key).strip().lower() == "jobid"]
    if body:
        try:
            root = etree.fromstring(body, xml_parser())
            found += [(e.text or "").strip() for e in root.iter(f"{{{_WPS_NS[1]}}}JobID")]
        except etree.XMLSyntaxError:
            pass  # the tween parsed this body already: it is well-formed
    if not found or not found[0]:
        raise MissingParameterValue("This request names no JobID.", locator="JobID")
    if any(value != found[0] for value in found[1:]):
        raise InvalidParameterValue("The request names several different JobIDs.", locator="JobID")
    return found[0]


# -- on the way back: learning the owner, filtering lists ----------------------------------------

def ogcapi_job_id(location: Optional[str], root: str) -> Optional[str]:
    """The job id of a ``Location`` (or link) ``<root>jobs/<id>``, ``root`` being the API root
    (ending in ``/``); None for anything else."""
    if not location:
        return None
    parts, base = urlsplit(location), urlsplit(root)
    if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return None
    rest = parts.path[len(base.path):] if parts.path.startswith(base.path) else None
    if rest is None:
        return None
    head, _, job_id = rest.strip("/").partition("/")
    return job_id if head.lower() == "jobs" and is_job_id(job_id) else None


def ogcapi_created_jobs(status: int, location: Optional[str], body: Optional[bytes], root: str) -> List[str]:
    """Job ids an answer to an execution announces: its ``Location``, a ``jobID`` in a JSON body."""
    if not 200 <= status < 300:
        return []
    found = []
    job_id = ogcapi_job_id(location, root)
    if job_id:
        found.append(job_id)
    if body:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            document = None
        body_id = document.get("jobID") if isinstance(document, dict) else None
        if isinstance(body_id, str) and is_job_id(body_id) and body_id not in found:
            found.append(body_id)
    return found


def wps_created_jobs(status: int, body: Optional[bytes]) -> List[str]:
    """Job ids a WPS answer announces: the status document name of a 1.0 ``ExecuteResponse``
    (``statusLocation``), the ``JobID`` of a 2.0 ``StatusInfo``."""
    if not body or not 200 <= status < 300:
        return []
    try:
        root = etree.fromstring(body, xml_parser())
    except etree.XMLSyntaxError:
        return []
    name = etree.QName(root)
    if name.namespace not in _WPS_NS:
        return []
    if name.localname == "ExecuteResponse":
        location = root.get("statusLocation") or ""
        stem = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return [stem] if is_job_id(stem) else []
    if name.localname == "StatusInfo":
        job_id = root.findtext(f"{{{_WPS_NS[1]}}}JobID") or ""
        return [job_id.strip()] if is_job_id(job_id.strip()) else []
    return []


def record_jobs(store, service: str, job_ids: Iterable[str], token: AccessToken, retention_hours: float) -> None:
    """Remember ``token``'s owner as the owner of ``job_ids``; a job id recorded already for someone
    else is logged and left to its first owner (the backend reused an id: never hand it over)."""
    for job_id in job_ids:
        record = new_record(service, job_id, token, retention_hours)
        if not store.save_job(record):
            log.warning("job %s of service %s was recorded already; owner kept", job_id, service)


def filter_job_list(body: bytes, service: str, store, token: AccessToken) -> Optional[bytes]:
    """The backend's ``/jobs`` JSON with only the caller's jobs, or None when it cannot be filtered
    (not JSON, no ``jobs`` array of objects with a ``jobID``): the caller then refuses it."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    jobs = document.get("jobs") if isinstance(document, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and isinstance(j.get("jobID"), str) for j in jobs):
        return None
    ids = [j["jobID"] for j in jobs if is_job_id(j["jobID"])]
    records = store.fetch_jobs(service, ids) if ids else {}
    owner = owner_of(token)
    kept = [j for j in jobs if j["jobID"] in records and records[j["jobID"]].owner == owner]
    document["jobs"] = kept
    for key in ("numberMatched", "numberReturned"):
        if key in document:
            document[key] = len(kept)
    return json.dumps(document).encode("utf-8")




# -- the proxy's hook --------------------------------------------------------------------------

#: ``inspect(status, headers, body)``: called by the proxy with the backend's answer before it is
#: sent on; ``body`` is the whole (decoded) document when the proxy read it for rewriting, None
#: when it streams it. Returns the body to send (maybe filtered) or raises to refuse the answer.
Inspector = Callable[[int, Sequence[Tuple[str, str]], Optional[bytes]], Optional[bytes]]


def answer_inspector(kind: Optional[str], service: str, token: Optional[AccessToken], store,
                     retention_hours: float, api_root: str) -> Optional[Inspector]:
    """What the proxy must do with the answer to one request, or None (most requests).

    ``kind``: ``execute`` (OGC API execution: record the job), ``jobs`` (OGC API job list: filter
    it or refuse), ``wps-execute`` (WPS Execute: record the job). Nothing without a token: a
    request that passed as public has no owner to record.
    """
    if token is None or kind is None:
        return None

    def location(headers) -> Optional[str]:
        return next((v for k, v in headers if k.lower() == "location"), None)

    if kind == "execute":
        def record_execution(status, headers, body):
            record_jobs(store, service, ogcapi_created_jobs(status, location(headers), body, api_root), token,
                        retention_hours)
            return body
        return record_execution
    if kind == "wps-execute":
        def record_wps(status, headers, body):
            record_jobs(store, service, wps_created_jobs(status, body), token, retention_hours)
            return body
        return record_wps
    if kind == "jobs":
        def filter_list(status, headers, body):
            if not 200 <= status < 300:
                return body
            filtered = filter_job_list(body, service, store, token) if body is not None else None
            if filtered is None:
                raise Forbidden("The job list can only be shown filtered to your jobs, as JSON within the size "
                                "limit: ask for f=json.", locator="jobs")
            return filtered
        return filter_list
    return None
