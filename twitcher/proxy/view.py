"""The OWS proxy: forward a request to its registered service and stream the answer back.

Where a request goes. Only to the URL registered for the service, never to one taken from the
request, so Twitcher is no open relay. The registered query string is kept and the client's query
string is appended byte for byte (WPS ``DataInputs=a=1;b=2`` survives), minus the token parameters,
which are stripped here even when the security tween did it already. Only bytes that no URL may
carry (space, ``"``, ``<``, ``>``, ``#``, non-ASCII, ...) are percent-encoded on the way.

The extra path. ``/ows/proxy/{name}/{extra_path}`` resolves ``extra_path`` as a relative reference
against the registered URL (RFC 3986), because PyWPS and friends publish status documents and
outputs *beside* their endpoint, not below it:

    ``http://h:5000/wps``  + ``outputs/x.nc``  -> ``http://h:5000/outputs/x.nc``
    ``http://h/api/``      + ``jobs/1``        -> ``http://h/api/jobs/1``

As in RFC 3986 the registered query string does not follow a relative path (an output file is a
different resource). Anything that could leave the service's origin or base directory is refused
with ``InvalidParameterValue``: ``.`` and ``..`` segments (percent-encoded or not, at any depth of
encoding), a leading ``/`` or an empty segment (``//``), a scheme (an absolute URL), backslashes
and control characters. The rewriting of backend documents (:mod:`twitcher.ows.rewrite`) produces
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
import re
import time
import weakref
import zlib
from itertools import chain
from typing import IO, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

from pyramid.request import Request
from pyramid.response import Response

from ..dataplane.accel import hand_off
from ..dataplane.front import FRONT_HEADER
from ..exceptions import (
    BadGateway,
    GatewayTimeout,
    InvalidParameterValue,
    OperationNotSupported,
    RequestTooLarge,
    ServiceBusy,
    UnknownService,
)
from ..jobs import Inspector, answer_inspector
from ..ogcapi import OGCAPI
from ..ogcapi.links import api_root, is_json_media_type, rewrite_json
from ..ogcapi.routes import METHODS as OGCAPI_METHODS
from ..ops.record import UPSTREAM_KEY
from ..ows.rewrite import charset_param, is_xml_media_type, rewrite_document, rewrite_link_header, rewrite_reference
from ..services import Service
from ..settings import TwitcherSettings
from ..tokens import strip_token_params, token_params
from ..tweens import ACCESS_ATTR, DECISION_ATTR, SERVICE_ATTR, Access
from .upstream import Exchange, ServiceSlots, Slot, Upstream, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

#: Bytes of a request body read from the client at a time, and of a document read for rewriting.
CHUNK_SIZE = 64 * 1024
ALLOWED_METHODS = ("GET", "HEAD", "POST")
#: Seconds a client is asked to wait (``Retry-After``) when a service has no free slot: a stuck
#: backend holds its slots until the timeouts end its exchanges, so retrying at once is pointless.
RETRY_AFTER = 5
#: The request headers that carry a token, which a shared cache must key an answer on.
TOKEN_HEADERS = ("Authorization", "Access-Token")
#: Methods whose request body is forwarded (PUT, PATCH and DELETE reach only ``ogcapi`` services).
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never forwarded to a backend: the client's credentials for Twitcher (tokens, cookies), what the
# HTTP client sets itself (Host, Content-Length), and forwarding headers that Twitcher sets anew.
_REQUEST_DROPPED = _HOP_BY_HOP | {
    "host", "cookie", "authorization", "access-token", "content-length",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", FRONT_HEADER.lower(),
}
_RESPONSE_DROPPED = _HOP_BY_HOP | {"content-length"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters left as they are when a decoded extra path is encoded again for the backend.
_PATH_SAFE = "/!$&'()*+,;=:@~"
# What a query string may hold on the wire (RFC 3986 query characters, and % of escapes). Anything
# else (space, quotes, a literal #, non-ASCII bytes) is percent-encoded, as browsers do.
_QUERY_SAFE = "/?!$&'()*+,;=:@~%"
_QUERY_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~/?!$&'()*+,;=:@%]")


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
        else:  # still changing: no honest client encodes a path four times, and we cannot judge it
            raise refuse("it is percent-encoded too many times")
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
        if parts.query and client_query:
            client_query = _without_keys(client_query, _query_keys(parts.query))
        path, query = parts.path, "&".join(q for q in (parts.query, client_query) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, _wire_query(query), ""))


def _query_keys(query: str) -> frozenset:
    """The keys of a raw query string, decoded and lower-cased (OWS keys ignore letter case)."""
    return frozenset(unquote_plus(pair.partition("=")[0]).strip().lower() for pair in query.split("&") if pair)


def _without_keys(query: str, keys: frozenset) -> str:
    """The client's raw query without the pairs whose key the registered URL fixes.

    The registered value wins: a second ``map=`` (MapServer) or ``coverage=`` from the client
    would otherwise reach the backend beside it, and which one a backend takes is its own affair.
    The client's copy is dropped rather than refused, because clients repeat what a capabilities
    document or an old link gave them; it can never take effect either way.
    """
    pairs = query.split("&")
    kept = [pair for pair in pairs if unquote_plus(pair.partition("=")[0]).strip().lower() not in keys]
    if len(kept) != len(pairs):
        log.debug("dropped client query parameters that the registered URL fixes")
    return "&".join(kept)


def _wire_query(query: str) -> str:
    """``query`` with the bytes no URL may carry percent-encoded, every other byte as it was.

    A WSGI query string is bytes decoded as latin-1: they are encoded back before escaping.
    """
    if not _QUERY_UNSAFE.search(query):
        return query
    try:
        raw = query.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: text beyond latin-1 goes as UTF-8
        raw = query.encode("utf-8")
    return quote(raw, safe=_QUERY_SAFE)


def _connection_tokens(headers: Iterable[Tuple[str, str]]) -> set:
    named = set()
    for key, value in headers:
        if key.lower() == "connection":
            named.update(v.strip().lower() for v in value.split(",") if v.strip())
    return named


def environ_headers(environ: dict) -> Iterator[Tuple[str, str]]:
    """The client's request headers from a WSGI environ, named as WebOb names them.

    Read straight from the environ: ``request.headers`` translates every environ key, which cost
    a tenth of a proxied request's Python time.
    """
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").title(), value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").title(), value


def _carries_token(key: str, value: str, token: Optional[str]) -> bool:
    """True for a header that holds the client's token, or a ``Referer`` with a token parameter.

    A browser that opened a proxy URL with ``?access_token=`` names that URL in the ``Referer`` of
    every request the page makes; the token may also sit in the path (``/proxy/emu/<token>``) or in
    any header a client invents. Such headers are dropped whole: a Referer is a courtesy, and
    editing it would have to guess which part is the credential.
    """
    if token and token in value:
        return True
    if key.lower() == "referer":
        _, _, query = value.partition("?")
        return bool(query) and bool(token_params(query.partition("#")[0]))
    return False


def forward_request_headers(headers: Iterable[Tuple[str, str]], client_addr: Optional[str],
                            scheme: str, host: str, token: Optional[str] = None) -> List[Tuple[str, str]]:
    """The client's end-to-end headers, without credentials for Twitcher, plus ``X-Forwarded-*``.

    ``X-Forwarded-For`` extends the chain the client sent; ``-Proto`` and ``-Host`` are what the
    caller passes (the view: the public proxy URL), which a backend needs to build links that work.
    ``token`` is the token the client presented: no header that holds it goes on.
    """
    headers = list(headers)
    dropped = _REQUEST_DROPPED | _connection_tokens(headers)
    forwarded_for = [v for k, v in headers if k.lower() == "x-forwarded-for"]
    kept = [(k, v) for k, v in headers if k.lower() not in dropped and not k.lower().startswith("x-ssl-")
            and not _carries_token(k, v, token)]
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
                             proxy_url: str, request_url: Optional[str] = None) -> List[Tuple[str, str]]:
    """The backend's end-to-end headers, none of which names the backend.

    ``Location``, ``Content-Location`` and each target of ``Link`` (RFC 8288, ``anchor`` too) are
    resolved against ``request_url`` (the URL the request went to; the service URL by default)
    and then lead through the proxy when they point into the service's directory, are dropped
    when they point elsewhere on the backend's origin, and pass when they point elsewhere
    (:func:`twitcher.ows.rewrite.rewrite_reference`).
    """
    headers = list(headers)
    dropped = _RESPONSE_DROPPED | _connection_tokens(headers)
    base = request_url or service_url
    kept = []
    for key, value in headers:
        lower = key.lower()
        if lower in dropped:
            continue
        if lower in ("location", "content-location"):
            value = rewrite_reference(value, base, service_url, proxy_url)
        elif lower == "link":
            value = rewrite_link_header(value, base, service_url, proxy_url)
        if value is None:
            log.debug("dropped the backend's %s header: it names the backend", key)
            continue
        kept.append((key, value))
    return kept


def private_cache_headers(headers: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """``headers`` of an answer to a protected request, made unfit for shared caches.

    ``Cache-Control`` gets ``private`` (a backend's ``public``, ``s-maxage`` and
    ``proxy-revalidate`` go, its other directives, ``no-store`` among them, stay) and ``Vary``
    names the token headers, so that no cache between Twitcher and the client hands a protected
    answer to someone else.
    """
    directives, vary, kept = [], [], []
    for key, value in headers:
        lower = key.lower()
        if lower == "cache-control":
            directives += [d.strip() for d in value.split(",") if d.strip()]
        elif lower == "vary":
            vary += [v.strip() for v in value.split(",") if v.strip()]
        else:
            kept.append((key, value))
    directives = [d for d in directives
                  if d.partition("=")[0].strip().lower() not in ("public", "s-maxage", "proxy-revalidate", "private")]
    kept.append(("Cache-Control", ", ".join(["private"] + directives)))
    if "*" not in vary:
        present = {v.lower() for v in vary}
        vary += [name for name in TOKEN_HEADERS if name.lower() not in present]
    kept.append(("Vary", ", ".join(vary)))
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


def send(upstream: Upstream, method: str, url: str, headers: List[Tuple[str, str]],
         body: Union[BoundedBody, bytes, None], verify: Union[bool, str],
         timeout: Tuple[float, float], slot: Optional[Slot] = None) -> Exchange:
    """Send the request upstream and wait for the answer's headers; failures become OWS errors.

    A :class:`SizedBody` goes out with its ``Content-Length``, a :class:`BoundedBody` of unknown
    length chunked; both are streamed, never held whole in memory. ``slot`` goes with the exchange
    and is released when it ends.
    """
    try:
        return upstream.exchange(method, url, list(_merge(headers)), body, verify, timeout, slot)
    except UpstreamTimeout as exc:
        log.warning("backend %s did not answer in time: %s", _loggable(url), exc.detail)
        raise GatewayTimeout("The service did not answer in time.") from None
    except UpstreamError as exc:
        if isinstance(exc.cause, RequestTooLarge):  # our own body limit broke the exchange off
            raise exc.cause from None
        log.warning("backend %s unreachable: %s", _loggable(url), exc.detail)
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
    abandoned download does not keep a backend connection busy. Should nobody call it (a tween
    that fails after the view), the service slot is still given back when the body is collected.
    """

    def __init__(self, upstream: Exchange, url: str, chunks: Iterable[bytes], prefix: Iterable[bytes] = ()):
        self.upstream = upstream
        self.url = url
        self.chunks = chain(prefix, chunks)
        if upstream.slot is not None:
            weakref.finalize(self, upstream.slot.release)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
        except (UpstreamError, zlib.error) as exc:
            # The status line is sent already: all that is left is to break the connection so
            # that the client sees a truncated answer rather than a complete-looking one.
            log.warning("backend %s broke off while streaming: %s", _loggable(self.url), exc)
            raise

    def close(self) -> None:
        self.upstream.close()


def _decoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """``chunks`` of a gzip or deflate body, decompressed in pieces of at most CHUNK_SIZE bytes,
    so that a small compressed answer cannot blow up in memory before the rewrite limit stops it."""
    # gzip: a gzip header; deflate: a zlib stream (RFC 9110), or a raw one from old servers.
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS | 32)
    for chunk in chunks:
        try:
            piece = decoder.decompress(chunk, CHUNK_SIZE)
        except zlib.error:
            if encoding != "deflate":
                raise
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)
            piece = decoder.decompress(chunk, CHUNK_SIZE)
        while piece:
            yield piece
            piece = decoder.decompress(decoder.unconsumed_tail, CHUNK_SIZE) if decoder.unconsumed_tail else b""
    tail = decoder.flush()
    if tail:
        yield tail


def _read_up_to(chunks: Iterator[bytes], limit: int) -> Tuple[List[bytes], bool]:
    """Read chunks until more than ``limit`` bytes or the end; True when the end was reached."""
    read, total = [], 0
    for chunk in chunks:
        read.append(chunk)
        total += len(chunk)
        if total > limit:
            return read, False
    return read, True


def _header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _inspect_streamed(inspect: Optional[Inspector], upstream: Exchange) -> None:
    """Show ``inspect`` an answer that will be streamed (no body); release the backend if it refuses."""
    if inspect is None:
        return
    try:
        inspect(upstream.status, upstream.headers, None)
    except BaseException:
        upstream.close()
        raise


def _rewritable_type(content_type: Optional[str]) -> bool:
    return is_xml_media_type(content_type) or is_json_media_type(content_type)


def proxy_response(upstream: Exchange, method: str, url: str, service_url: str, proxy_url: str,
                   rewrite_max_bytes: int, rewrite_timeout: Optional[float] = None,
                   inspect: Optional[Inspector] = None) -> Response:
    """The answer to the client: status, end-to-end headers and the streamed, maybe rewritten body.

    ``method`` and ``url`` are those of the request sent upstream (``url`` resolves relative
    links in headers, and goes to the log). A document read for rewriting must arrive whole within
    ``rewrite_timeout`` seconds (504 otherwise): read timeouts count silences only, and a backend
    that trickles a byte at a time would otherwise hold the worker thread as long as it likes.
    ``inspect`` (:mod:`twitcher.jobs`) sees the answer first: it records job owners, and may
    replace a document it read (a filtered job list) or refuse the answer by raising.
    """
    headers = forward_response_headers(upstream.headers, service_url, proxy_url, url)
    content_type = _header(upstream.headers, "content-type")
    length = _header(upstream.headers, "content-length")
    length = int(length) if length and length.isdigit() else None
    encoding = (_header(upstream.headers, "content-encoding") or "identity").strip().lower()
    status = f"{upstream.status} {upstream.reason}".strip()

    if method == "HEAD":
        # No body to rewrite; a rewritten document's length is unknown until it is fetched.
        upstream.close()
        if inspect is not None:
            inspect(upstream.status, upstream.headers, None)
        if length is not None and not _rewritable_type(content_type):
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=[])

    rewritable = _rewritable_type(content_type) and encoding in ("identity", "gzip", "x-gzip", "deflate")
    if not rewritable or (length is not None and length > rewrite_max_bytes):
        _inspect_streamed(inspect, upstream)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, url, upstream.chunks()))

    # An XML or JSON document small enough to rewrite: read it decoded (a compressed one is sent on
    # uncompressed), but never more than the limit, whatever Content-Length promised.
    chunks = upstream.chunks()
    if encoding != "identity":
        headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
        chunks = _decoded(chunks, encoding)
    if rewrite_timeout is not None:
        upstream.deadline = time.monotonic() + rewrite_timeout
    try:
        read, complete = _read_up_to(chunks, rewrite_max_bytes)
    except UpstreamTimeout as exc:
        upstream.close()
        log.warning("backend %s did not send its document in time: %s", _loggable(url), exc.detail)
        raise GatewayTimeout("The service did not send its answer in time.") from None
    except (UpstreamError, zlib.error) as exc:
        upstream.close()
        log.warning("backend %s sent a broken answer: %s", _loggable(url), exc)
        raise BadGateway("The service sent a broken answer.") from None
    upstream.deadline = None  # a document too large to rewrite streams at its own pace
    if not complete:
        _inspect_streamed(inspect, upstream)
        if length is not None and encoding == "identity":
            headers.append(("Content-Length", str(length)))
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, url, chunks, read))
    upstream.close()
    body = b"".join(read)
    if inspect is not None:
        body = inspect(upstream.status, upstream.headers, body)
    try:
        if is_json_media_type(content_type):
            body = rewrite_json(body, service_url, proxy_url)
        else:
            body = rewrite_document(body, service_url, proxy_url, charset_param(content_type))
    except Exception:  # a document the rewriting cannot handle goes on as it came, never a 500
        log.exception("backend %s sent a document that could not be rewritten; passed on as is", _loggable(url))
    headers.append(("Content-Length", str(len(body))))
    return Response(status=status, headerlist=headers, app_iter=[body])


def public_proxy_url(service: Service, settings: TwitcherSettings) -> str:
    """Where clients reach ``service``: its ``purl`` when registered with one, else through Twitcher."""
    if service.purl:
        return service.purl.rstrip("/")
    return f"{settings.public_base_url}{settings.protected_path}/proxy/{service.name}"


def upstream_url(service: Service, query_string: str, extra_path: Optional[str], token: Optional[str]) -> str:
    """The backend URL of a request to ``service`` (:func:`target_url`), for the proxy and for
    nginx alike (:mod:`twitcher.dataplane`); an extra path that holds the token is refused."""
    if token and extra_path and token in (unquote(s) for s in extra_path.split("/")):
        raise InvalidParameterValue("The extra path contains the access token; send it in a header.",
                                    locator="extra_path")
    # An OGC API's landing page is a directory: extra paths go below it, not beside it.
    base_url = api_root(service.url) if service.type == OGCAPI and extra_path is not None else service.url
    return target_url(base_url, query_string, extra_path)


def owsproxy_view(request: Request) -> Response:
    """Forward the request to the registered service; the security tween has let it pass."""
    name = request.matchdict["service_name"]
    service: Optional[Service] = getattr(request, SERVICE_ATTR, None)
    if service is None or service.name != name:  # the security tween is off: look it up here
        service = request.registry.store.fetch_by_name(name)
    if service is None:
        raise UnknownService(name)
    ogcapi = service.type == OGCAPI
    if request.method not in (OGCAPI_METHODS if ogcapi else ALLOWED_METHODS):
        raise OperationNotSupported(f"The HTTP method {request.method} is not supported here.",
                                    locator=request.method, status=405)
    settings: TwitcherSettings = request.registry.twitcher
    access: Access = getattr(request, ACCESS_ATTR, None) or Access(None, False)
    extra_path = request.matchdict.get("extra_path")
    url = upstream_url(service, request.environ.get("QUERY_STRING", ""), extra_path, access.token)
    root = api_root(service.url)  # where an OGC API's paths, links and jobs live
    proxy_url = public_proxy_url(service, settings)
    # X-Forwarded-Proto and -Host from the public URL, not from the client's Host header: a backend
    # that builds links from them must not be led to write a host of the client's choosing.
    public = urlsplit(proxy_url)
    # remote_addr, not client_addr: webob's client_addr believes what X-Forwarded-For claims.
    headers = forward_request_headers(environ_headers(request.environ), request.remote_addr, public.scheme,
                                      public.netloc, access.token)
    if settings.data_plane == "nginx":  # the bytes of data answers go through nginx (twitcher/dataplane)
        handed = hand_off(request, service, url, headers, extra_path)
        if handed is not None:
            return handed
    body = request_body(request, settings.max_request_body) if request.method in _BODY_METHODS else None
    slot = request.registry.service_slots.acquire(service.name)
    if slot is None:
        refused = request.registry.service_slots.refusals_to_report(service.name)
        if refused:
            log.warning("service %s had %d exchanges in flight: %d requests refused (busy) since the last report",
                        service.name, settings.max_inflight_per_service, refused)
        raise ServiceBusy("The service is busy; try again later.", retry_after=RETRY_AFTER)
    decision = getattr(request, DECISION_ATTR, None)
    inspect = None if decision is None else answer_inspector(
        decision.answer_kind, service.name, decision.token, request.registry.store, settings.job_retention_hours,
        root)
    timing = request.environ[UPSTREAM_KEY] = [time.perf_counter(), None]  # ops: twitcher/ops/record.py
    try:
        upstream = send(request.registry.upstream, request.method, url, headers, body,
                        service.verify, settings.proxy_timeout, slot)
        timing[1] = time.perf_counter()  # ops
        if log.isEnabledFor(logging.DEBUG):
            log.debug("proxied %s to service %s: %s", request.method, service.name, upstream.status)
        response = proxy_response(upstream, request.method, url, root if ogcapi else service.url,
                                  proxy_url, settings.rewrite_max_bytes, settings.rewrite_timeout, inspect)
    except BaseException:
        slot.release()
        raise
    if access.protected:
        response.headerlist = private_cache_headers(response.headerlist)
    return response


def includeme(config) -> None:
    """Routes for the proxy under the protected path; any method reaches the view, which answers
    405 itself, because a route predicate mismatch would be a misleading 404."""
    prefix = config.registry.twitcher.protected_path
    config.registry.upstream = Upstream()
    config.registry.service_slots = ServiceSlots(config.registry.twitcher.max_inflight_per_service)
    config.add_route("owsproxy", prefix + "/proxy/{service_name}")
    config.add_route("owsproxy_extra", prefix + "/proxy/{service_name}/{extra_path:.*}")
    config.add_view(owsproxy_view, route_name="owsproxy")
    config.add_view(owsproxy_view, route_name="owsproxy_extra")
    config.include("twitcher.dataplane")  # the nginx verify endpoint
