"""The XML-RPC admin API at ``/RPC2``: tokens and the service registry, for admins only.

The methods are compatible with the MongoDB-era Twitcher (0.3/0.4), so existing portals keep
working; each one's docstring below is its reference. Every call needs the admin's HTTP Basic
credentials (:mod:`twitcher.admin.auth`); without them the answer is HTTP 401 and nothing happens.

Errors come back as XML-RPC faults whose ``faultString`` says what was wrong. Fault codes:

====== ====================================================================================
code   meaning
====== ====================================================================================
1      an argument is invalid (type, range, format); fix the call
2      ``register_service`` with ``overwrite=False``: the name is taken already
3      the token/service store is not available; try again later
-32500 internal error (logged on the server; no details are sent)
-32601 no such method
-32602 wrong number of arguments
-32700 the request is not well-formed XML-RPC
====== ====================================================================================
"""
from __future__ import annotations

import inspect
import logging
import re
from datetime import timedelta
from typing import Any, Dict, List, Optional
from xmlrpc.client import Fault, dumps

from pyramid.httpexceptions import HTTPException, HTTPNotFound
from pyramid.response import Response

from .. import services, tokens
from ..exceptions import InvalidArgument, ServiceExists, StoreUnavailable
from ..federation import scope
from ..federation.biscuit import looks_signed
from . import auth

log = logging.getLogger(__name__)

ENDPOINT = "RPC2"

FAULT_INVALID_ARGUMENT = 1
FAULT_SERVICE_EXISTS = 2
FAULT_STORE_UNAVAILABLE = 3
FAULT_INTERNAL_ERROR = -32500
FAULT_METHOD_NOT_FOUND = -32601
FAULT_INVALID_PARAMS = -32602
FAULT_NOT_WELL_FORMED = -32700

#: How deep arrays and structs may nest in an argument. The API's deepest argument is a struct of
#: strings (``data``, ``environ``: depth 1); anything far deeper is an attack on the parser.
MAX_ARGUMENT_DEPTH = 8


def as_fault(exc: Exception, method: str) -> Fault:
    """The one translation of Twitcher's errors into XML-RPC faults.

    Expected errors carry their message to the admin; anything else is logged here, with its
    traceback, and answered with a generic fault so that no internals leak.
    """
    if isinstance(exc, ServiceExists):
        return Fault(FAULT_SERVICE_EXISTS, str(exc))
    if isinstance(exc, InvalidArgument):
        return Fault(FAULT_INVALID_ARGUMENT, f"{method}: {exc}")
    if isinstance(exc, StoreUnavailable):
        log.error("admin API %s: store unavailable", method)
        return Fault(FAULT_STORE_UNAVAILABLE, "the token and service store is not available; try again later")
    log.error("admin API %s: unexpected error", method, exc_info=exc)
    return Fault(FAULT_INTERNAL_ERROR, "internal error (see the Twitcher log)")


class PositionalMapper:
    """Pyramid view mapper for the methods: XML-RPC params bound to the function's signature.

    Unlike pyramid_rpc's default mapper it never fills arguments from the query string, so
    what an admin sends in the body is exactly what the method gets; and it is where method
    errors become faults (:func:`as_fault`).
    """

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self, view):
        signature = inspect.signature(view)

        def call_method(context, request):
            method = request.rpc_method
            try:
                bound = signature.bind(request, *request.rpc_args)
            except TypeError as exc:
                raise Fault(FAULT_INVALID_PARAMS, f"{method}: {exc}") from None
            try:
                return view(*bound.args, **bound.kwargs)
            except Exception as exc:
                raise as_fault(exc, method) from None

        return call_method


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    return value


# -- tokens ------------------------------------------------------------------------------


def generate_token(request, valid_in_hours: Any = 1, environ: Any = None, subject: Any = None,
                   options: Any = None) -> Dict[str, Any]:
    """Make an access token for one client.

    ``valid_in_hours``: lifetime, a number greater than 0 and at most ``twitcher.token_max_hours``
    (numeric strings are accepted). ``environ``: optional struct of strings handed to the internal
    WPS with each request made with this token (never to proxied services); at most
    32 entries, keys are letters, digits and ``_`` that do not clash with WSGI/CGI names.
    ``subject``: optional, who the token is for (a user name, at most 256 printable characters);
    every token of one subject owns that subject's jobs, a token without one only its own.

    ``options``: optional struct. ``{"signed": true}`` makes a signed token (a Biscuit, see
    docs/federation.rst) that other sites trusting this one accept without asking us; it needs
    ``twitcher.signing_key``. ``"services"`` (list of service names, ``twitcher:wps`` for the
    internal WPS) and ``"operations"`` (list of OWS request names, e.g. ``execute``) restrict
    it; absent or empty means any. Without options the token is opaque, as in 0.3.

    Returns ``{"access_token": str, "expires_at": int}`` (expiry in epoch seconds, UTC). The
    token is shown only here: Twitcher keeps its SHA-256 digest (or, for a signed token, its
    revocation id).
    """
    hours = tokens.validate_hours(valid_in_hours, request.registry.twitcher.token_max_hours)
    data = tokens.validate_environ(environ)
    signed = scope.signed_options(options)
    if signed is not None:
        return _generate_signed_token(request, hours, data, scope.subject(subject), signed)
    token, record = tokens.new_token(hours, data, subject=tokens.validate_subject(subject))
    request.registry.store.save_token(record)
    log.info("admin API: token %s generated, valid %g h", tokens.fingerprint(token), hours)
    return {"access_token": token, "expires_at": int(record.expires_at.timestamp())}


def _generate_signed_token(request, hours: float, environ: Dict[str, str], subject: Any,
                           signed: scope.SignedOptions) -> Dict[str, Any]:
    expires_at = tokens.utcnow().replace(microsecond=0) + timedelta(hours=hours)
    try:
        token = request.registry.federation.mint(expires_at, subject=subject, services=signed.services,
                                                 operations=signed.operations, environ=environ)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    log.info("admin API: signed token %s generated, valid %g h", tokens.fingerprint(token), hours)
    return {"access_token": token, "expires_at": int(expires_at.timestamp())}


def revoke_token(request, token: Any) -> bool:
    """Revoke one token at once on every Twitcher sharing this store.

    A signed token is revoked by its revocation id, which every token derived from it carries
    too: they are all refused here at once (other processes: at their next poll), and at the
    other sites after their next poll of our list at ``<protected_path>/revoked``.

    Returns True when a valid token was revoked, False when the token is unknown, expired or
    revoked already (or, signed, not signed by a key we trust).
    """
    token = _require_str(token, "token")
    if looks_signed(token):
        revoked = request.registry.federation.revoke(token, request.registry.twitcher.token_max_hours)
    else:
        revoked = request.registry.store.revoke_token(tokens.token_digest(token))
    log.info("admin API: revoke token %s: %s", tokens.fingerprint(token), "done" if revoked else "not active")
    return revoked


def revoke_all_tokens(request) -> bool:
    """Revoke every token, the signed tokens minted here included. Returns True."""
    count = request.registry.store.revoke_all_tokens()
    count += request.registry.federation.revoke_all()
    log.info("admin API: all tokens revoked (%d active)", count)
    return True


# -- services ----------------------------------------------------------------------------


def register_service(request, url: Any, data: Any = None, overwrite: Any = True) -> Dict[str, Any]:
    """Register (or with ``overwrite``, replace) an OWS service behind the proxy.

    ``url``: the service's ``http``/``https`` endpoint; its query string is kept. ``data``
    (optional struct): ``name`` (derived from the URL when absent; lower-case letters, digits,
    ``_``, ``-``), ``type`` (``wps`` default, ``wms``, ``wfs``, ``wcs``), ``public`` (false: needs
    a token), ``auth`` (``token`` or ``cert``), ``purl`` (public URL used in rewritten
    documents), ``verify`` (true, false or the absolute path of a CA bundle). A value of nil
    means the default. ``overwrite`` (boolean, default true): false makes an existing name a
    fault (code 2).

    Returns the service struct ``{name, url, type, public, auth, purl, verify}``.
    """
    if not isinstance(overwrite, bool):
        raise InvalidArgument(f"overwrite must be a boolean, got {overwrite!r}")
    service = services.service_from_registration(url, data)
    saved = request.registry.store.save_service(service, overwrite=overwrite)
    log.info("admin API: service %r registered (type %s, public %s)", saved.name, saved.type, saved.public)
    return saved.as_struct()


def unregister_service(request, name: Any) -> bool:
    """Remove the service ``name``. Returns True when it was registered."""
    name = _require_str(name, "name")
    removed = request.registry.store.delete_service(name)
    if removed:
        log.info("admin API: service %r unregistered", name)
    return removed


def get_service_by_name(request, name: Any) -> Dict[str, Any]:
    """The service struct registered under ``name``, or ``{}`` when there is none."""
    service = request.registry.store.fetch_by_name(_require_str(name, "name"))
    return service.as_struct() if service else {}


def get_service_by_url(request, url: Any) -> Dict[str, Any]:
    """The service struct registered with exactly ``url`` (first by name), or ``{}``."""
    service = request.registry.store.fetch_by_url(_require_str(url, "url"))
    return service.as_struct() if service else {}


def list_services(request) -> List[Dict[str, Any]]:
    """Every registered service struct, sorted by name."""
    return [service.as_struct() for service in request.registry.store.list_services()]


def clear_services(request) -> bool:
    """Remove every registered service. Returns True."""
    count = request.registry.store.clear_services()
    log.info("admin API: all services removed (%d)", count)
    return True


METHODS = (generate_token, revoke_token, revoke_all_tokens, register_service, unregister_service,
           get_service_by_name, get_service_by_url, list_services, clear_services)


# -- errors before a method runs ---------------------------------------------------------

# The tags that nest, the parameter boundaries and the method name, in a raw XML-RPC body; and
# the declarations by which internal entities could build nesting that no tag shows.
_STRUCTURE = re.compile(rb"<(/?)(array|struct|param)(?:\s[^>]*)?(/?)>|<!(?:DOCTYPE|ENTITY)")
_METHOD_NAME = re.compile(rb"<methodName>\s*([A-Za-z0-9_.:]{1,64})\s*</methodName>")


def _argument_name(method: Optional[str], index: int) -> str:
    """The name of the ``index``-th (from 1) argument of ``method`` for a fault message."""
    for function in METHODS:
        if function.__name__ == method:
            names = list(inspect.signature(function).parameters)[1:]  # without ``request``
            if index <= len(names):
                return names[index - 1]
    return f"#{index}"


def nesting_fault(body: bytes) -> Optional[Fault]:
    """A fault for an XML-RPC body whose arguments nest deeper than :data:`MAX_ARGUMENT_DEPTH`
    (or that declares a DOCTYPE), found by a scan of the raw bytes before anything parses them.

    The standard library's XML-RPC parser builds whatever nesting a body describes: 100000 nested
    arrays in a 2 MB body cost some 150 MB of memory before any method could look at its
    arguments, and their ``repr`` would recurse past Python's limit. The scan keeps none of it.
    """
    method_match = _METHOD_NAME.search(body, 0, 4096)
    method = method_match.group(1).decode("ascii") if method_match else None
    depth = param = 0
    for match in _STRUCTURE.finditer(body):
        closing, tag, empty = match.groups()
        if tag is None:
            return Fault(FAULT_NOT_WELL_FORMED, "an XML-RPC request must not declare a DOCTYPE or entities")
        if empty:
            continue
        if tag == b"param":
            param += 0 if closing else 1
        elif closing:
            depth -= 1
        else:
            depth += 1
            if depth > MAX_ARGUMENT_DEPTH:
                return Fault(FAULT_INVALID_ARGUMENT,
                             f"{method or 'request'}: argument {_argument_name(method, param)} nests arrays or "
                             f"structs more than {MAX_ARGUMENT_DEPTH} levels deep")
    return None


def argument_depth_tween_factory(handler, registry):
    """Refuse over-deep XML-RPC arguments before pyramid_rpc parses the body (see
    :func:`nesting_fault`); below the admin gate, so that strangers get their 401 first."""

    def argument_depth_tween(request):
        if request.path_info == auth.ADMIN_PATH and request.method == "POST":
            fault = nesting_fault(request.body)
            if fault is not None:
                log.warning("admin API: refused a request: %s", fault.faultString)
                return Response(body=dumps(fault, methodresponse=True).encode("utf-8"),
                                content_type="text/xml", charset="utf-8")
        return handler(request)

    return argument_depth_tween


def http_error_view(exc: HTTPException, request):
    """Forbidden or unknown method at ``/RPC2``: 401 for strangers, a fault for admins.

    pyramid_rpc would answer a failed permission check with a 200 fault; an admin API must
    answer 401 + ``WWW-Authenticate`` so that clients know to send credentials, and must not
    tell a stranger which methods exist.
    """
    if not request.is_authenticated:
        return auth.challenge(request)
    if isinstance(exc, HTTPNotFound):
        return Fault(FAULT_METHOD_NOT_FOUND, f"no such method: {getattr(request, 'rpc_method', None)!r}")
    return auth.challenge(request)


def unparsed_fault_view(exc: Fault, request):
    """A fault raised before routing (a body that is not XML-RPC): 401 first for strangers."""
    if not request.is_authenticated:
        return auth.challenge(request)
    return exc


def includeme(config) -> None:
    config.include(".auth")
    config.add_tween("twitcher.admin.rpcinterface.argument_depth_tween_factory",
                     under="twitcher.admin.auth.admin_gate_tween_factory")
    config.include("pyramid_rpc.xmlrpc")
    config.add_xmlrpc_endpoint(ENDPOINT, auth.ADMIN_PATH, default_mapper=PositionalMapper)
    for method in METHODS:
        config.add_xmlrpc_method(method, endpoint=ENDPOINT, method=method.__name__,
                                 permission=auth.ADMIN_PERMISSION, require_csrf=False)
    # Route-specific, so it wins over pyramid_rpc's catch-all fault view for this route.
    config.add_view(http_error_view, context=HTTPException, route_name=ENDPOINT, renderer="xmlrpc")
    # Same discriminator as pyramid_rpc's own view: ours wins because we include pyramid_rpc.
    config.add_view(unparsed_fault_view, context=Fault, renderer="xmlrpc")
