"""The OWS security tween: under the protected path, only public requests or valid tokens pass.

One pass per request: find the target, parse the OWS request (errors are 400 whatever the
token) or classify the OGC API request by method and path (:mod:`twitcher.ogcapi.routes`),
decide whether a token is needed, extract and check it against the store, check the owner of a
job the request reads (:mod:`twitcher.jobs`), clean the WSGI environ, then call the handler.
Every refusal is an exception rendered by :mod:`twitcher.ows.exceptions`.

The judgement is :func:`decide`, a plain function returning a :class:`Decision`: the tween is a
thin wrapper around it, so that any other caller judges a request exactly the same way.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import List, Optional

from pyramid.tweens import EXCVIEW

from . import jobs
from .exceptions import (
    AccessDenied,
    InvalidArgument,
    InvalidParameterValue,
    MalformedRequest,
    OperationNotSupported,
    OWSException,
    RequestTooLarge,
    UnknownService,
)
from .federation.access import INTERNAL_WPS, check_access
from .ogcapi import OGCAPI
from .ogcapi.routes import EXECUTE, JOB, JOB_LIST, PUBLIC, Route, classify
from .ogcapi.routes import METHODS as OGCAPI_METHODS
from .ops.record import ALLOWED, DECISION_KEY
from .ops.record import Decision as AccessRecord
from .ows.exceptions import SERVICE_ATTR, path_is_under
from .ows.request import (
    OWSRequest,
    check_query_agrees,
    decisive_values,
    parse_kvp,
    parse_xml,
    request_for_service,
)
from .services import Service, check_name
from .settings import TwitcherSettings
from .tokens import (
    AccessToken,
    fingerprint,
    strip_token_params,
    token_digest,
    token_params,
    validate_environ,
)

log = logging.getLogger(__name__)

PROXY = "proxy"
WPS = "wps"
#: ``<prefix>/verify/...``: the nginx verify endpoint, which judges with :func:`decide` the request
#: that nginx describes in its headers (:mod:`twitcher.dataplane.verify`), not the subrequest itself.
VERIFY = "verify"
# SERVICE_ATTR (from ows.exceptions, which renders refusals by the service's type): the request
# attribute where the tween leaves the service it resolved for a proxy request, so that the proxy
# view does not look the same service up a second time. Absent when the tween is off
# (``twitcher.ows_security = false``): the view then looks the service up itself.
#: The request attribute where the tween leaves an :class:`Access` for the proxy, which must keep
#: the token out of the extra path and shared caches away from answers to protected requests.
ACCESS_ATTR = "ows_access"
OTHER = "other"
#: The request attribute where :func:`decide` leaves its :class:`Decision` for the handlers
#: (the proxy records the owner of a job it relays the creation of).
DECISION_ATTR = "ows_decision"
_READ_CHUNK = 64 * 1024
_ALLOWED_METHODS = ("GET", "HEAD", "POST")
#: What a token in the path may look like: ``secrets.token_urlsafe`` output (ours is 43 characters).
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")


@dataclass(frozen=True)
class Access:
    """What the proxy must know of a request's credentials: the token it presented (None if
    none), and whether it needed one (or a certificate) to pass."""

    token: Optional[str]
    protected: bool


@dataclass(frozen=True)
class Target:
    """What a protected path points at: the proxy (with a service name), the internal WPS, or nothing known.

    ``extra`` is true when the path goes below the service root (status documents, outputs):
    such requests are never judged public by their request name.
    """

    kind: str
    service_name: Optional[str] = None
    extra: bool = False


def resolve_target(path: str, prefix: str) -> Optional[Target]:
    """The target of ``path`` under ``prefix``, or None when the path is not protected.

    Mirrors the routes ``<prefix>/proxy/{service_name}[/{extra_path}]`` and ``<prefix>/wps[/...]``;
    a path that matches neither is ``OTHER`` (it still needs a token: fail closed). The verify
    endpoint ``<prefix>/verify/...`` is None: it runs :func:`decide` itself on what it verifies.
    """
    if not path_is_under(path, prefix):
        return None
    rest = path[len(prefix) + 1:]
    head, slash, tail = rest.partition("/")
    if head == PROXY and slash:
        name, extra_slash, _ = tail.partition("/")
        if name:
            return Target(PROXY, service_name=name, extra=bool(extra_slash))
        return Target(OTHER)
    if head == WPS:
        return Target(WPS, extra=bool(slash))
    if head == VERIFY and slash:
        return None
    return Target(OTHER)


def _bearer(authorization: str) -> Optional[str]:
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def extract_token(request) -> Optional[str]:
    """The access token of ``request``, from the sources of DESIGN.md §2 in order, or None.

    Sources: query parameters ``access_token`` and ``token`` (any letter case), header
    ``Access-Token``, header ``Authorization: Bearer``. The same token given in several places
    is fine; different tokens are refused with :class:`InvalidParameterValue` (400): the request
    is ambiguous, and no credential the client could add would make it acceptable.
    """
    return _token_of(request.environ, token_params(request.environ.get("QUERY_STRING", "")))


def _token_of(environ: dict, query_tokens: List[str]) -> Optional[str]:
    found = [value for value in query_tokens if value]
    header = environ.get("HTTP_ACCESS_TOKEN", "").strip()
    if header:
        found.append(header)
    bearer = _bearer(environ.get("HTTP_AUTHORIZATION", ""))
    if bearer:
        found.append(bearer)
    if not found:
        return None
    if any(value != found[0] for value in found[1:]):
        raise InvalidParameterValue("The request carries several different access tokens.", locator="access_token")
    return found[0]


def strip_credentials(environ: dict, trust_cert_header: bool, query_has_tokens: bool = True) -> None:
    """Remove token parameters and headers (and untrusted certificate headers) from ``environ``.

    Done for every protected request, public ones included: the proxy strips them as well,
    but nothing downstream should ever have to. ``query_has_tokens=False`` (the caller has
    just looked) skips a second pass over the query string.
    """
    query_string = environ.get("QUERY_STRING", "")
    if query_string and query_has_tokens:
        environ["QUERY_STRING"] = strip_token_params(query_string)
    environ.pop("HTTP_ACCESS_TOKEN", None)
    if _bearer(environ.get("HTTP_AUTHORIZATION", "")) is not None:
        del environ["HTTP_AUTHORIZATION"]
    if not trust_cert_header:
        for key in [k for k in environ if k.startswith("HTTP_X_SSL_")]:
            del environ[key]


def _declared_length(environ: dict, limit: int) -> Optional[int]:
    """``Content-Length`` as a number, refusing an oversized body before a byte is read."""
    text = environ.get("CONTENT_LENGTH")
    if not text:
        return None
    try:
        length = int(text)
    except ValueError:
        raise MalformedRequest("The Content-Length header is not a number.") from None
    if length < 0:
        raise MalformedRequest("The Content-Length header is negative.")
    if length > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    return length


def read_body(request, limit: int) -> bytes:
    """Read the body, at most ``limit`` bytes (chunked bodies too), and keep it for the handler."""
    environ = request.environ
    length = _declared_length(environ, limit)
    if length is None:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("wsgi.input_terminated"):
            raise MalformedRequest("A chunked request body needs a server that terminates wsgi.input; "
                                   "send Content-Length.", status=411)
        length = limit + 1 if chunked else 0
    stream = environ["wsgi.input"]
    chunks = []
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    body = b"".join(chunks)
    if len(body) > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    # webob keeps it seekable and sets Content-Length; the dechunked body is no longer chunked.
    request.body = body
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


def take_path_token(environ: dict, root: str, store) -> Optional[str]:
    """The token of the 0.3/0.4 URL form ``<service root>/<token>``, removed from ``PATH_INFO``.

    That form shares its shape with an extra path of one segment (``/proxy/emu/jobs``), so a
    segment counts as a token only when it has a token's shape *and* the store knows its digest
    (usable, revoked or expired: the check that follows says which). The segment is then cut off
    the path before routing, so the request reaches the service root and the token is never
    forwarded. Anything else stays an extra path, which needs a token of its own.
    """
    head, _, segment = environ.get("PATH_INFO", "").rpartition("/")
    if head != root or not _TOKEN_SHAPE.fullmatch(segment) or store.fetch_token(token_digest(segment)) is None:
        return None
    environ["PATH_INFO"] = head
    return segment


class OWSSecurity:
    """The access decision for one protected request; built once per application."""

    def __init__(self, settings: TwitcherSettings):
        self.prefix = settings.protected_path
        self.public_requests = settings.public_requests
        self.max_body = settings.max_request_body
        self.trust_cert_header = settings.trust_forwarded_cert_header
        self.ogcapi_rules = settings.ogcapi_public

    def parse(self, request, target: Target) -> Optional[OWSRequest]:
        """The OWS request at a service root (None below it), refusing what must not be judged."""
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        if method not in _ALLOWED_METHODS:
            raise OperationNotSupported(f"The HTTP method {method} is not supported here.", locator=method,
                                        status=405)
        query_string = environ.get("QUERY_STRING", "")
        if target.extra or target.kind == OTHER:
            decisive_values(query_string)  # duplicates are refused everywhere
            if method == "POST":
                _declared_length(environ, self.max_body)
            return None
        if method == "POST":
            ows = parse_xml(read_body(request, self.max_body))
            check_query_agrees(ows, query_string)
            return ows
        return parse_kvp(query_string)

    def check(self, request, target: Target) -> Decision:
        """Raise unless ``request`` may reach its handler; clean its environ when it may.

        Returns the :class:`Decision`: whether the request passed as public, and with which token.
        """
        store = request.registry.store
        note = request.environ[DECISION_KEY] = AccessRecord(target.service_name)  # ops: twitcher/ops/record.py
        path_token = None
        if target.extra and target.kind != OTHER:
            root = f"{self.prefix}/{PROXY}/{target.service_name}" if target.kind == PROXY else f"{self.prefix}/{WPS}"
            path_token = take_path_token(request.environ, root, store)
        if path_token is not None:
            target = replace(target, extra=False)
        service = None
        if target.kind == PROXY and _valid_name(target.service_name):
            service = store.fetch_by_name(target.service_name)
        if service is not None:
            setattr(request, SERVICE_ATTR, service)  # also for refusals: their form follows the type
        route, ows = None, None
        if service is not None and service.type == OGCAPI:
            route = self.classify_ogcapi(request, target)
            public = route.access == PUBLIC
            service_type = OGCAPI
            note.route = route.kind  # ops: a bounded label, never the raw path
        else:
            ows = self.parse(request, target)
            if target.kind == PROXY and service is None:
                raise UnknownService(target.service_name)
            service_type = service.type if service is not None else "wps"
            if ows is not None and target.kind != OTHER:
                public = (service_type, request_for_service(ows, service_type)) in self.public_requests
            else:
                public = False
        if service is not None and service.public:
            public = True
        environ = request.environ
        query_tokens = token_params(environ.get("QUERY_STRING", ""))
        token = _token_of(environ, query_tokens + ([path_token] if path_token else []))

        cert_ok = (service is not None and service.auth == "cert" and self.trust_cert_header
                   and environ.get("HTTP_X_SSL_CLIENT_VERIFY") == "SUCCESS")
        note.observe(service_type, ows, token)  # ops
        strip_credentials(environ, self.trust_cert_header, bool(query_tokens))
        setattr(request, ACCESS_ATTR, Access(token, not public))
        if public or cert_ok:
            return Decision(target, service, route)
        if token is None:
            raise AccessDenied("An access token is required for this request.")
        # Signed tokens are judged for this service and operation (None below a service root and
        # on OGC API paths that stand for no OWS operation: only tokens without an operation
        # restriction pass there); opaque ones by the store.
        if route is not None:
            operation = route.operation
        else:
            operation = request_for_service(ows, service_type) if ows is not None and target.kind != OTHER else None
        signed_service = {PROXY: target.service_name, WPS: INTERNAL_WPS}.get(target.kind)
        record = check_access(request.registry, token, signed_service, operation)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("token %s accepted for %s", fingerprint(token), request.path_info)
        if target.kind == WPS and record.environ:
            try:
                environ.update(validate_environ(record.environ))
            except InvalidArgument:
                log.error("token %s carries environ data that is not allowed; refused", fingerprint(token))
                raise OWSException("The access token carries data that cannot be used.", status=500) from None
        decision = Decision(target, service, route, token=record,
                            operation=ows.request if ows is not None else None)
        self.check_job_owner(store, decision, request)
        return decision

    def check_job_owner(self, store, decision: Decision, request) -> None:
        """Refuse (403, before anything is forwarded) a job of someone else: an OGC API
        ``/jobs/{jobId}[/...]``, a WPS extra path that names a recorded job, a WPS 2.0
        ``GetStatus``/``GetResult``/``Dismiss`` of a job (:mod:`twitcher.jobs`)."""
        service = decision.service
        if service is None:
            return
        if decision.route is not None:
            if decision.route.kind == JOB:
                jobs.check_ogcapi_job(store, service.name, decision.route.job_id, decision.token)
        elif decision.target.extra:
            path = request.environ.get("PATH_INFO", "")
            jobs.check_wps_path(store, service.name, path[len(f"{self.prefix}/{PROXY}/{service.name}"):],
                                decision.token)
        elif (decision.operation or "").lower() in jobs.WPS2_JOB_REQUESTS:
            body = request.body if request.environ["REQUEST_METHOD"] == "POST" else b""
            job_id = jobs.wps2_job_id(request.environ.get("QUERY_STRING", ""), body)
            jobs.check_ogcapi_job(store, service.name, job_id, decision.token)

    def classify_ogcapi(self, request, target: Target) -> Route:
        """The route of a request to an ``ogcapi`` service, refusing methods and bodies we do not take."""
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        if method not in OGCAPI_METHODS:
            raise OperationNotSupported(f"The HTTP method {method} is not supported here.", locator=method,
                                        status=405)
        if method not in ("GET", "HEAD"):
            _declared_length(environ, self.max_body)
        root = f"{self.prefix}/{PROXY}/{target.service_name}"
        return classify(method, environ.get("PATH_INFO", "")[len(root):], self.ogcapi_rules)


@dataclass(frozen=True)
class Decision:
    """What the security check decided for one request that may pass.

    ``token`` is the checked token's record, None when the request passed without one (public,
    or a verified client certificate); ``route`` is the classification of an OGC API request,
    ``operation`` the OWS request name (``Execute``) of a checked request at an OWS service root.
    """

    target: Target
    service: Optional[Service] = None
    route: Optional[Route] = None
    token: Optional[AccessToken] = None
    operation: Optional[str] = None

    @property
    def answer_kind(self) -> Optional[str]:
        """What the answer means for job owners (see :func:`twitcher.jobs.answer_inspector`)."""
        if self.route is not None:
            return {EXECUTE: "execute", JOB_LIST: "jobs"}.get(self.route.kind)
        if self.operation is not None and self.operation.lower() == "execute":
            return "wps-execute"
        return None


def decide(request, security: OWSSecurity) -> Optional[Decision]:
    """The one decision path: None for a path outside the protected prefix, else the
    :class:`Decision` (left on the request as ``request.ows_decision``), or an exception.

    The tween calls it for every request; anything else that must judge a request the same way
    (an nginx verify endpoint, the internal WPS) calls it too.
    """
    target = resolve_target(request.path_info, security.prefix)
    if target is None:
        return None
    decision = security.check(request, target)
    setattr(request, DECISION_ATTR, decision)
    return decision


def _valid_name(name: Optional[str]) -> bool:
    try:
        check_name(name)
    except InvalidArgument:
        return False
    return True


def ows_security_tween_factory(handler, registry):
    """Guard every request under ``twitcher.protected_path``; pass everything else untouched."""
    security = OWSSecurity(registry.twitcher)

    def ows_security_tween(request):
        try:
            if decide(request, security) is not None:
                request.environ[DECISION_KEY].outcome = ALLOWED  # ops
        except AccessDenied as exc:
            # DEBUG, not INFO: every access log (nginx, gunicorn) has the 401 already, and
            # a log record per refusal cost a sixth of the refusal's CPU and let any client
            # flood the log.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("refused %s %s: %s", request.method, request.path_info, exc.text)
            raise
        return handler(request)

    return ows_security_tween


def includeme(config) -> None:
    # Under EXCVIEW: the exception-view tween wraps this one, so every OWSException and
    # StoreUnavailable raised here is rendered by the one place that renders errors,
    # twitcher.ows.exceptions (ExceptionReport with the right status, 503 for the store).
    config.add_tween("twitcher.tweens.ows_security_tween_factory", under=EXCVIEW)
