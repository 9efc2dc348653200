"""The OWS proxy: forward a request to its registered service and stream the answer back.

Where a request goes. Only to the URL registered for the service, never to one taken from the
request, so Twitcher is no open relay. The registered query string is kept and the client's query
string is appended byte for byte (WPS ``DataInputs=a=1;b=2`` survives), minus the token parameters,
which are stripped here even when the security tween did it already.

The extra path. ``/ows/proxy/{name}/{extra_path}`` resolves ``extra_path`` as a relative reference
against the registered URL (RFC 3986), because PyWPS and friends publish status documents and
outputs *beside* their endpoint, not below it:

    ``http://h:5000/wps``  + ``outputs/x.nc``  -> ``http://h:5000/outputs/x.nc``
    ``http://h/api/``      + ``jobs/1``        -> ``http://h/api/jobs/1``

As in RFC 3986 the registered query string does not follow a relative path (an output file is a
different resource). Anything that could leave the service's origin or base directory is refused
with ``InvalidParameterValue``: ``.`` and ``..`` segments (percent-encoded or not, at any depth of
encoding), a leading ``/`` or an empty segment (``//``), a scheme (an absolute URL), backslashes
and control characters. The rewriting of backend documents (:mod:`twitcher.owsrewrite`) produces
exactly the links this resolution turns back into backend URLs.

Answers. Status and end-to-end headers pass through; the body is streamed in chunks, so memory
does not grow with its size. XML documents up to ``twitcher.rewrite_max_bytes`` are rewritten so
that their links lead back through the proxy. A backend's own error answer (an ExceptionReport or
an HTML 500 page) passes through with its status: it is the backend's answer, and never contains a
Twitcher traceback. Twitcher's own failures are ExceptionReports: backend unreachable 502, backend
too slow 504, request body too large 413.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from itertools import chain
from typing import IO, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import urllib3
from pyramid.request import Request
from pyramid.response import Response
from urllib3.exceptions import HTTPError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as UpstreamTimeout

from .exceptions import (
    BadGateway,
    GatewayTimeout,
    InvalidParameterValue,
    OperationNotSupported,
    OWSException,
    RequestTooLarge,
    UnknownService,
)
from .owsrewrite import charset_param, is_xml_media_type, map_url, rewrite_document
from .services import Service
from .settings import TwitcherSettings
from .tokens import strip_token_params
from .tweens import SERVICE_ATTR

log = logging.getLogger(__name__)

#: Bytes of a request body read from the client at a time, and of a document read for rewriting.
CHUNK_SIZE = 64 * 1024
#: Bytes of a streamed answer passed on at a time. Each chunk costs a few Python calls and a
#: ``send`` of the WSGI server, so larger chunks stream faster (64 KiB: ~0.3 of the backend's
#: MB/s in ``make bench``); 256 KiB keeps a hundred parallel downloads within ~26 MB.
STREAM_CHUNK_SIZE = 256 * 1024
ALLOWED_METHODS = ("GET", "HEAD", "POST")
#: Connections kept per backend host; more parallel requests open extra, unpooled connections.
POOL_MAXSIZE = 32

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never forwarded to a backend: the client's credentials for Twitcher (tokens, cookies), what the
# HTTP client sets itself (Host, Content-Length), and forwarding headers that Twitcher sets anew.
_REQUEST_DROPPED = _HOP_BY_HOP | {
    "host", "cookie", "authorization", "access-token", "content-length",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
}
_RESPONSE_DROPPED = _HOP_BY_HOP | {"content-length"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters left as they are when a decoded extra path is encoded again for the backend.
_PATH_SAFE = "/!$&'()*+,;=:@~"


class UpstreamPool:
    """One urllib3 ``PoolManager`` per process, created lazily and again after a fork.

    urllib3 rather than ``requests``: the proxy needs none of what ``requests`` adds (cookies,
    redirects, environment proxies, ``.netrc``) and that layer cost more CPU per request than the
    HTTP exchange itself. A manager made before gunicorn forks its workers would share sockets
    between processes; the pid check gives every worker its own. Kept in the registry as
    ``registry.owsproxy_sessions`` (the name predates urllib3; ``tests/servers.py`` closes it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._manager: Optional[urllib3.PoolManager] = None

    def get(self) -> urllib3.PoolManager:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._manager = _new_manager()
                    self._pid = pid
        return self._manager

    def close(self) -> None:
        with self._lock:
            if self._manager is not None and self._pid == os.getpid():
                self._manager.clear()
            self._manager, self._pid = None, None


def _new_manager() -> urllib3.PoolManager:
    # No retries (a POST must not be sent twice) and no redirects (the client follows them,
    # through the proxy); no default headers: a backend gets exactly the headers chosen here.
    return urllib3.PoolManager(num_pools=16, maxsize=POOL_MAXSIZE, block=False, retries=False)


def _tls_options(verify: Union[bool, str]) -> dict:
    """urllib3 pool options for a service's ``verify``: each distinct value gets its own pools."""
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    if verify is True:
        return {"cert_reqs": "CERT_REQUIRED"}  # the system's trust store
    if os.path.isdir(verify):
        return {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir": verify}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify}


def _safe_relative_path(extra_path: str) -> str:
    """The percent-encoded relative path for a decoded ``extra_path``, or InvalidParameterValue."""
    def refuse(why: str):
        return InvalidParameterValue(f"The extra path is not allowed: {why}.", locator="extra_path")

    if "\\" in extra_path or _CONTROL.search(extra_path):
        raise refuse("it contains a backslash or a control character")
    if extra_path.startswith("/") or "//" in extra_path:
        raise refuse("it contains an empty segment")
    if _SCHEME.match(extra_path):
        raise refuse("it is an absolute URL")
    for segment in extra_path.split("/"):
        decoded = segment
        for _ in range(4):  # %252e%252e is .. after two rounds of decoding: decode until stable
            decoded, previous = unquote(decoded), decoded
            if decoded == previous:
                break
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise refuse("it leaves the service's directory")
    return quote(extra_path, safe=_PATH_SAFE)


def target_url(service_url: str, query_string: str, extra_path: Optional[str] = None) -> str:
    """The backend URL for a request: see the module docstring for the rules.

    ``extra_path`` is None for ``/proxy/{name}`` and a string, maybe empty, for
    ``/proxy/{name}/...``: ``/proxy/{name}/`` is the service's directory, as rewriting maps it.
    """
    parts = urlsplit(service_url)
    client_query = strip_token_params(query_string)
    if extra_path is not None:
        directory = parts.path[: parts.path.rfind("/") + 1] or "/"
        path, query = directory + _safe_relative_path(extra_path), client_query
    else:
        path, query = parts.path, "&".join(q for q in (parts.query, client_query) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def _connection_tokens(headers: Iterable[Tuple[str, str]]) -> set:
    named = set()
    for key, value in headers:
        if key.lower() == "connection":
            named.update(v.strip().lower() for v in value.split(",") if v.strip())
    return named


def forward_request_headers(headers: Iterable[Tuple[str, str]], client_addr: Optional[str],
                            scheme: str, host: str) -> List[Tuple[str, str]]:
    """The client's end-to-end headers, without credentials for Twitcher, plus ``X-Forwarded-*``.

    ``X-Forwarded-For`` extends the chain the client sent; ``-Proto`` and ``-Host`` describe how
    the client reached Twitcher, which a backend needs to build links to itself that work.
    """
    headers = list(headers)
    dropped = _REQUEST_DROPPED | _connection_tokens(headers)
    forwarded_for = [v for k, v in headers if k.lower() == "x-forwarded-for"]
    kept = [(k, v) for k, v in headers if k.lower() not in dropped and not k.lower().startswith("x-ssl-")]
    if not any(k.lower() == "accept-encoding" for k, _ in kept):
        # The client takes the body as it comes; do not let a backend compress what it cannot read.
        kept.append(("Accept-Encoding", "identity"))
    if client_addr:
        forwarded_for.append(client_addr)
    if forwarded_for:
        kept.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    kept.append(("X-Forwarded-Proto", scheme))
    kept.append(("X-Forwarded-Host", host))
    return kept


def forward_response_headers(headers: Iterable[Tuple[str, str]], service_url: str,
                             proxy_url: str) -> List[Tuple[str, str]]:
    """The backend's end-to-end headers; a redirect to the backend itself is sent through the proxy."""
    headers = list(headers)
    dropped = _RESPONSE_DROPPED | _connection_tokens(headers)
    kept = []
    for key, value in headers:
        if key.lower() in dropped:
            continue
        if key.lower() in ("location", "content-location"):
            value = map_url(value, service_url, proxy_url) or value
        kept.append((key, value))
    return kept


class BoundedBody:
    """The client's request body, read in chunks and refused past ``limit`` bytes.

    Iterating it streams the body to the backend without holding it in memory; when it grows
    past the limit it raises :class:`RequestTooLarge` and remembers it in ``exceeded``.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.exceeded = False

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        while True:
            chunk = self.stream.read(CHUNK_SIZE)
            if not chunk:
                return
            total += len(chunk)
            if total > self.limit:
                self.exceeded = True
                raise RequestTooLarge(f"The request body is larger than {self.limit} bytes.")
            yield chunk


class SizedBody(BoundedBody):
    """A :class:`BoundedBody` of known length, sent with ``Content-Length`` instead of chunked."""

    def __init__(self, stream: IO[bytes], limit: int, length: int) -> None:
        super().__init__(stream, limit)
        self.length = length

    def __len__(self) -> int:
        return self.length


def request_body(request: Request, limit: int) -> Union[BoundedBody, bytes]:
    """The body to forward: streamed from the client, or the bytes the tween has read already."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    if length == 0 or not request.is_body_readable:
        return b""
    if request.is_body_seekable:
        # The tween read it (bounded) to parse it: it is in memory already, and one buffer goes
        # out with the request line and headers in a single send instead of chunk by chunk.
        return request.body
    if length is None:
        return BoundedBody(request.body_file, limit)
    return SizedBody(request.body_file, limit, length)


def send(manager: urllib3.PoolManager, method: str, url: str, headers: List[Tuple[str, str]],
         body: Union[BoundedBody, bytes, None], verify: Union[bool, str],
         timeout: Tuple[float, float]) -> urllib3.BaseHTTPResponse:
    """Send the request upstream, the answer not yet read; backend failures become OWS errors.

    A :class:`SizedBody` goes out with its ``Content-Length``, a :class:`BoundedBody` of unknown
    length chunked; both are streamed, never held whole in memory.
    """
    headers = dict(_merge(headers))
    if isinstance(body, SizedBody):
        headers["Content-Length"] = str(body.length)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        pool = manager.connection_from_host(parts.hostname, parts.port, parts.scheme, pool_kwargs=_tls_options(verify))
        return pool.urlopen(method, target, body=body, headers=headers, retries=False, redirect=False,
                            assert_same_host=False, timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                            preload_content=False, decode_content=False)
    except RequestTooLarge:
        raise
    except NewConnectionError as exc:  # urllib3 files a refused connection under timeouts: it is not one
        raise _unreachable(url, body, exc) from None
    except UpstreamTimeout as exc:
        log.warning("backend %s did not answer in time: %s", _loggable(url), type(exc).__name__)
        raise GatewayTimeout("The service did not answer in time.") from None
    except (HTTPError, OSError) as exc:
        raise _unreachable(url, body, exc) from None


def _unreachable(url: str, body: Union[BoundedBody, bytes, None], exc: Exception) -> OWSException:
    """The error for a failed exchange: 413 when our own body limit broke it off, else 502."""
    if isinstance(body, BoundedBody) and body.exceeded:
        return RequestTooLarge(f"The request body is larger than {body.limit} bytes.")
    log.warning("backend %s unreachable: %s", _loggable(url), type(exc).__name__)
    return BadGateway("The service is not reachable.")


def _merge(headers: List[Tuple[str, str]]) -> Iterator[Tuple[str, str]]:
    """Fold repeated request headers into one comma-separated header, as RFC 9110 allows."""
    merged: dict = {}
    for key, value in headers:
        merged.setdefault(key.lower(), [key, []])[1].append(value)
    for key, values in merged.values():
        yield key, ", ".join(values)


def _loggable(url: str) -> str:
    """A backend URL for the log: without its query string, which is the client's business."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class StreamedBody:
    """A WSGI ``app_iter`` over the backend's body; ``close()`` releases the backend connection.

    The WSGI server calls ``close()`` when the client is done, also when it went away early, so an
    abandoned download does not keep a backend connection busy.
    """

    def __init__(self, upstream: urllib3.BaseHTTPResponse, url: str, chunks: Iterable[bytes],
                 prefix: Iterable[bytes] = ()):
        self.upstream = upstream
        self.url = url
        self.chunks = chain(prefix, chunks)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
        except (HTTPError, OSError) as exc:
            # The status line is sent already: all that is left is to break the connection so
            # that the client sees a truncated answer rather than a complete-looking one.
            log.warning("backend %s broke off while streaming: %s", _loggable(self.url), type(exc).__name__)
            raise

    def close(self) -> None:
        finish(self.upstream)


def finish(upstream: urllib3.BaseHTTPResponse) -> None:
    """Let go of an answer: a connection read to the end goes back to the pool, any other is closed.

    urllib3 returns a connection to its pool by itself once the body was read to the end; closing
    first makes sure a half-read one is never reused with the rest of an old body in it.
    """
    upstream.close()
    upstream.release_conn()


def _read_up_to(chunks: Iterator[bytes], limit: int) -> Tuple[List[bytes], bool]:
    """Read chunks until more than ``limit`` bytes or the end; True when the end was reached."""
    read, total = [], 0
    for chunk in chunks:
        read.append(chunk)
        total += len(chunk)
        if total > limit:
            return read, False
    return read, True


def proxy_response(upstream: urllib3.BaseHTTPResponse, method: str, url: str, service_url: str, proxy_url: str,
                   rewrite_max_bytes: int) -> Response:
    """The answer to the client: status, end-to-end headers and the streamed, maybe rewritten body.

    ``method`` and ``url`` are those of the request sent upstream (``url`` for the log only).
    """
    upstream_headers = upstream.headers
    headers = forward_response_headers(upstream_headers.items(), service_url, proxy_url)
    content_type = upstream_headers.get("Content-Type")
    length = upstream_headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    encoded = upstream_headers.get("Content-Encoding", "identity").lower() != "identity"
    status = f"{upstream.status} {upstream.reason or ''}".strip()

    if method == "HEAD":
        # No body to rewrite; a rewritten document's length is unknown until it is fetched.
        finish(upstream)
        if length is not None and not is_xml_media_type(content_type):
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=[])

    if not is_xml_media_type(content_type) or (length is not None and length > rewrite_max_bytes):
        if length is not None:
            headers.append(("Content-Length", str(length)))
        chunks = upstream.stream(STREAM_CHUNK_SIZE, decode_content=False)
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, url, chunks))

    # An XML document small enough to rewrite: read it decoded (a compressed one is sent on
    # uncompressed), but never more than the limit, whatever Content-Length promised.
    headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
    chunks = upstream.stream(CHUNK_SIZE, decode_content=True)
    try:
        read, complete = _read_up_to(chunks, rewrite_max_bytes)
    except ReadTimeoutError:
        finish(upstream)
        raise GatewayTimeout("The service did not answer in time.") from None
    except (HTTPError, OSError) as exc:
        finish(upstream)
        log.warning("backend %s sent a broken answer: %s", _loggable(url), type(exc).__name__)
        raise BadGateway("The service sent a broken answer.") from None
    if not complete:
        if length is not None and not encoded:
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, url, chunks, read))
    finish(upstream)
    body = rewrite_document(b"".join(read), service_url, proxy_url, charset_param(content_type))
    headers.append(("Content-Length", str(len(body))))
    return Response(status=status, headerlist=headers, app_iter=[body])


def public_proxy_url(service: Service, settings: TwitcherSettings) -> str:
    """Where clients reach ``service``: its ``purl`` when registered with one, else through Twitcher."""
    if service.purl:
        return service.purl.rstrip("/")
    return f"{settings.public_base_url}{settings.protected_path}/proxy/{service.name}"


def owsproxy_view(request: Request) -> Response:
    """Forward the request to the registered service; the security tween has let it pass."""
    if request.method not in ALLOWED_METHODS:
        raise OperationNotSupported(f"The HTTP method {request.method} is not supported; use GET, HEAD or POST.",
                                    locator=request.method, status=405)
    name = request.matchdict["service_name"]
    service: Optional[Service] = getattr(request, SERVICE_ATTR, None)
    if service is None or service.name != name:  # the security tween is off: look it up here
        service = request.registry.store.fetch_by_name(name)
    if service is None:
        raise UnknownService(name)
    settings: TwitcherSettings = request.registry.twitcher
    url = target_url(service.url, request.environ.get("QUERY_STRING", ""), request.matchdict.get("extra_path"))
    # remote_addr, not client_addr: webob's client_addr believes what X-Forwarded-For claims.
    headers = forward_request_headers(request.headers.items(), request.remote_addr, request.scheme, request.host)
    body = request_body(request, settings.max_request_body) if request.method == "POST" else None
    upstream = send(request.registry.owsproxy_sessions.get(), request.method, url, headers, body,
                    service.verify, settings.proxy_timeout)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("proxied %s to service %s: %s", request.method, service.name, upstream.status)
    return proxy_response(upstream, request.method, url, service.url, public_proxy_url(service, settings),
                          settings.rewrite_max_bytes)


def includeme(config) -> None:
    """Routes for the proxy under the protected path; any method reaches the view, which answers
    405 itself, because a route predicate mismatch would be a misleading 404."""
    prefix = config.registry.twitcher.protected_path
    config.registry.owsproxy_sessions = UpstreamPool()
    config.add_route("owsproxy", prefix + "/proxy/{service_name}")
    config.add_route("owsproxy_extra", prefix + "/proxy/{service_name}/{extra_path:.*}")
    config.add_view(owsproxy_view, route_name="owsproxy")
    config.add_view(owsproxy_view, route_name="owsproxy_extra")
