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

import requests
import urllib3
from pyramid.request import Request
from pyramid.response import Response
from requests.adapters import HTTPAdapter

from .exceptions import (
    BadGateway,
    GatewayTimeout,
    InvalidParameterValue,
    OperationNotSupported,
    RequestTooLarge,
    UnknownService,
)
from .owsrewrite import charset_param, is_xml_media_type, map_url, rewrite_document
from .services import Service
from .settings import TwitcherSettings
from .tokens import strip_token_params

log = logging.getLogger(__name__)

#: Bytes read from the client or the backend at a time: large enough to be fast, small enough
#: that a thousand parallel downloads stay within a few hundred MB.
CHUNK_SIZE = 64 * 1024
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


class SessionPool:
    """One pooled ``requests.Session`` per process, created lazily and again after a fork.

    A session made before gunicorn forks its workers would share sockets between processes; the
    pid check gives every worker its own. Kept in the registry (``registry.owsproxy_sessions``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._session: Optional[requests.Session] = None

    def get(self) -> requests.Session:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._session = _new_session()
                    self._pid = pid
        return self._session

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._session, self._pid = None, None


def _new_session() -> requests.Session:
    session = requests.Session()
    # No proxy variables or ~/.netrc credentials from the environment: a backend gets exactly
    # the headers chosen here, and no default headers the client did not send.
    session.trust_env = False
    session.headers.clear()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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
    """The body to forward, streamed; works whether or not the tween has read it already."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    if length == 0 or not request.is_body_readable:
        return b""
    if request.is_body_seekable:
        request.body_file_raw.seek(0)  # the tween parsed it: start again from the first byte
    if length is None:
        return BoundedBody(request.body_file, limit)
    return SizedBody(request.body_file, limit, length)


def send(session: requests.Session, method: str, url: str, headers: List[Tuple[str, str]],
         body: Union[BoundedBody, bytes, None], verify: Union[bool, str],
         timeout: Tuple[float, float]) -> requests.Response:
    """Send the request upstream, the answer not yet read; backend failures become OWS errors."""
    try:
        return session.request(method, url, headers=dict(_merge(headers)), data=body, stream=True,
                               timeout=timeout, verify=verify, allow_redirects=False)
    except RequestTooLarge:
        raise
    except requests.Timeout as exc:
        log.warning("backend %s did not answer in time: %s", _loggable(url), type(exc).__name__)
        raise GatewayTimeout("The service did not answer in time.") from None
    except (requests.RequestException, OSError) as exc:
        if isinstance(body, BoundedBody) and body.exceeded:
            raise RequestTooLarge(f"The request body is larger than {body.limit} bytes.") from None
        log.warning("backend %s unreachable: %s", _loggable(url), type(exc).__name__)
        raise BadGateway("The service is not reachable.") from None


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

    def __init__(self, upstream: requests.Response, chunks: Iterable[bytes], prefix: Iterable[bytes] = ()):
        self.upstream = upstream
        self.chunks = chain(prefix, chunks)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The status line is sent already: all that is left is to break the connection so
            # that the client sees a truncated answer rather than a complete-looking one.
            log.warning("backend %s broke off while streaming: %s", _loggable(self.upstream.url),
                        type(exc).__name__)
            raise

    def close(self) -> None:
        self.upstream.close()


def _read_up_to(chunks: Iterator[bytes], limit: int) -> Tuple[List[bytes], bool]:
    """Read chunks until more than ``limit`` bytes or the end; True when the end was reached."""
    read, total = [], 0
    for chunk in chunks:
        read.append(chunk)
        total += len(chunk)
        if total > limit:
            return read, False
    return read, True


def proxy_response(upstream: requests.Response, service_url: str, proxy_url: str,
                   rewrite_max_bytes: int) -> Response:
    """The answer to the client: status, end-to-end headers and the streamed, maybe rewritten body."""
    headers = forward_response_headers(upstream.raw.headers.items(), service_url, proxy_url)
    content_type = upstream.headers.get("Content-Type")
    length = upstream.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    encoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity"
    status = f"{upstream.status_code} {upstream.reason or ''}".strip()

    if upstream.request.method == "HEAD":
        # No body to rewrite; a rewritten document's length is unknown until it is fetched.
        upstream.close()
        if length is not None and not is_xml_media_type(content_type):
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=[])

    if not is_xml_media_type(content_type) or (length is not None and length > rewrite_max_bytes):
        if length is not None:
            headers.append(("Content-Length", str(length)))
        chunks = upstream.raw.stream(CHUNK_SIZE, decode_content=False)
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, chunks))

    # An XML document small enough to rewrite: read it decoded (a compressed one is sent on
    # uncompressed), but never more than the limit, whatever Content-Length promised.
    headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
    chunks = upstream.raw.stream(CHUNK_SIZE, decode_content=True)
    try:
        read, complete = _read_up_to(chunks, rewrite_max_bytes)
    except urllib3.exceptions.ReadTimeoutError:
        upstream.close()
        raise GatewayTimeout("The service did not answer in time.") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        upstream.close()
        log.warning("backend %s sent a broken answer: %s", _loggable(upstream.url), type(exc).__name__)
        raise BadGateway("The service sent a broken answer.") from None
    if not complete:
        if length is not None and not encoded:
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, chunks, read))
    upstream.close()
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
    service = request.store.fetch_by_name(name)
    if service is None:
        raise UnknownService(name)
    settings: TwitcherSettings = request.registry.twitcher
    url = target_url(service.url, request.environ.get("QUERY_STRING", ""), request.matchdict.get("extra_path"))
    # remote_addr, not client_addr: webob's client_addr believes what X-Forwarded-For claims.
    headers = forward_request_headers(request.headers.items(), request.remote_addr, request.scheme, request.host)
    body = request_body(request, settings.max_request_body) if request.method == "POST" else None
    upstream = send(request.registry.owsproxy_sessions.get(), request.method, url, headers, body,
                    service.verify, settings.proxy_timeout)
    log.info("proxied %s to service %s: %s", request.method, service.name, upstream.status_code)
    return proxy_response(upstream, service.url, public_proxy_url(service, settings), settings.rewrite_max_bytes)


def includeme(config) -> None:
    """Routes for the proxy under the protected path; any method reaches the view, which answers
    405 itself, because a route predicate mismatch would be a misleading 404."""
    prefix = config.registry.twitcher.protected_path
    config.registry.owsproxy_sessions = SessionPool()
    config.add_route("owsproxy", prefix + "/proxy/{service_name}")
    config.add_route("owsproxy_extra", prefix + "/proxy/{service_name}/{extra_path:.*}")
    config.add_view(owsproxy_view, route_name="owsproxy")
    config.add_view(owsproxy_view, route_name="owsproxy_extra")
