"""The nginx configuration of the data plane, generated from the registered services.

``twitcherctl nginx-config`` prints it: an include for nginx's ``http`` context (Debian's
``/etc/nginx/conf.d/*.conf``) with one ``server``:

* every request goes to Twitcher (``upstream twitcher_app``), which judges it. Under the protected
  path nginx adds the front secret (:mod:`twitcher.dataplane.front`), so that Twitcher may hand
  data answers back to nginx with ``X-Accel-Redirect`` (:mod:`twitcher.dataplane.accel`);
* one ``upstream`` per registered service (``keepalive``), and one internal location per service
  that forwards a hand-off there: method (``proxy_method``), backend path and query, forwarding
  headers from Twitcher's answer; the client's credentials (``Authorization``, ``Access-Token``,
  ``Cookie``, ...) cleared; ``proxy_buffering off``; ``Location`` mapped to the proxy (or dropped
  when it names the backend otherwise), ``Content-Location`` and ``Link`` dropped, the service's
  URL mapped in XML, JSON and HTML answers (``sub_filter``), ``Cache-Control: private`` and
  ``Vary`` for protected requests; nginx's own 502/504 as ExceptionReports (problem documents for
  OGC API services), as Twitcher renders them;
* a catch-all internal data location that sends a hand-off for a service this configuration
  does not know (registered, or its URL changed, since it was generated) back to Twitcher, which
  then forwards it itself: a stale configuration is slower, never wrong;
* the verify locations for ``auth_request`` (:mod:`twitcher.dataplane.verify`): nginx passes the
  original method and URI in ``X-Original-Method`` and ``X-Original-URI``.

No ``resolver`` is needed: ``proxy_pass`` with variables names an ``upstream`` block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence
from urllib.parse import urlsplit

from .. import __version__
from ..exceptions import BadGateway, GatewayTimeout, OWSException, RequestTooLarge
from ..ogcapi import OGCAPI
from ..ogcapi.links import api_root
from ..ogcapi.problems import problem_document
from ..ows.exceptions import exception_report
from ..services import Service
from ..settings import TwitcherSettings
from .accel import DATA_LOCATION, FALLBACK_HEADER, data_location
from .front import FRONT_HEADER

#: The CA bundle nginx checks HTTPS backends against when a service is registered with ``verify``.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: Where operators' own locations point ``auth_request`` (it maps ``<prefix>/proxy/...`` URIs).
VERIFY_LOCATION = "/_twitcher/verify"
#: Media types in which nginx maps the service's URL to the proxy (a fail-safe: data answers
#: rarely are documents, but an error answer may be one).
SUB_FILTER_TYPES = (
    "text/xml", "application/xml", "application/json", "application/geo+json", "application/problem+json",
    "application/vnd.ogc.se_xml", "application/vnd.ogc.wms_xml", "application/vnd.ogc.gml",
    "application/gml+xml", "application/wps+xml", "application/atom+xml", "application/ld+json",
    "application/xhtml+xml",
)
#: With buffering off nginx relays data through one buffer of this size per request: the 4 or 8 KiB
#: of the default cost a read and a write per 8 KiB (a tenth of the rate of a 200 MB download).
DATA_BUFFER = "256k"
#: Idle keep-alive connections nginx keeps to Twitcher and to each backend.
APP_KEEPALIVE = 32
SERVICE_KEEPALIVE = 16


@dataclass(frozen=True)
class Front:
    """What the operator says about the nginx server: where it listens, where Twitcher is, TLS."""

    listen: str
    app: str
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    client_ca: Optional[str] = None


def _quote(text: str) -> str:
    """``text`` as an nginx string: double-quoted, with ``"`` and ``\\`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex(text: str) -> str:
    """``text`` matched literally by a PCRE regex inside an nginx string."""
    return re.sub(r"([.^$*+?()\[\]{}|\\/-])", r"\\\1", text)


def _error_body(exc: OWSException, service_type: str) -> tuple:
    if service_type == OGCAPI:
        import json

        return "application/problem+json", json.dumps(problem_document(exc))
    return "text/xml", exception_report(exc).decode("utf-8")


def _errors(index: int, service: Service) -> List[str]:
    lines = []
    for exc in (BadGateway("The service is not reachable."), GatewayTimeout("The service did not answer in time.")):
        media_type, body = _error_body(exc, service.type)
        lines += [
            f"location @twitcher_{exc.status}_{index} {{",
            f"    default_type {media_type};",
            "    charset utf-8;" if media_type == "text/xml" else "    charset off;",
            f"    return {exc.status} {_quote(body)};",
            "}",
        ]
    return lines


def _upstream_host(service: Service) -> str:
    parts = urlsplit(service.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _directory(service: Service) -> str:
    """The backend directory that Twitcher's rewriting maps to the proxy (twitcher.ows.rewrite)."""
    base = api_root(service.url) if service.type == OGCAPI else service.url
    parts = urlsplit(base)
    path = parts.path[: parts.path.rfind("/") + 1] or "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _proxy_url(service: Service, settings: TwitcherSettings) -> str:
    # as twitcher.proxy.view.public_proxy_url (imported there would pull the whole proxy in)
    if service.purl:
        return service.purl.rstrip("/")
    return f"{settings.public_base_url}{settings.protected_path}/proxy/{service.name}"


def _service_maps(index: int, service: Service, settings: TwitcherSettings) -> List[str]:
    directory = _directory(service)
    parts = urlsplit(service.url)
    return [
        f"# {service.name}: Location into {directory} leads through the proxy; elsewhere on the backend, dropped",
        f"map $upstream_http_location $twitcher_location_{index} {{",
        "    default $upstream_http_location;",
        f"    {_quote('~*^' + _regex(directory) + '(?<twitcher_rest_' + str(index) + '>.*)$')} "
        f"{_quote(_proxy_url(service, settings) + '/$twitcher_rest_' + str(index))};",
        f"    {_quote('~*^[a-z][a-z0-9+.-]*://' + _regex(parts.netloc) + '([/?#]|$)')} \"\";",
        '    "~^/" "";',
        "}",
        f"map $upstream_http_content_location $twitcher_content_location_{index} {{",
        "    default $upstream_http_content_location;",
        f"    {_quote('~*^' + _regex(directory) + '(?<twitcher_crest_' + str(index) + '>.*)$')} "
        f"{_quote(_proxy_url(service, settings) + '/$twitcher_crest_' + str(index))};",
        f"    {_quote('~*^[a-z][a-z0-9+.-]*://' + _regex(parts.netloc) + '([/?#]|$)')} \"\";",
        '    "~^/" "";',
        "}",
        f"# {service.name}: a Link header that names the backend (or its origin's paths) is dropped",
        f"map $upstream_http_link $twitcher_link_{index} {{",
        "    default $upstream_http_link;",
        f"    {_quote('~*://' + _regex(parts.netloc) + '([/?#>]|$)')} \"\";",
        '    "~<\\s*/" "";',
        "}",
    ]


def _common_maps(settings: TwitcherSettings) -> List[str]:
    prefix = settings.protected_path
    return [
        "# Answers to protected requests: private to the client, varying with the token headers.",
        'map "$twitcher_private:$upstream_http_cache_control" $twitcher_cache_control {',
        "    default $upstream_http_cache_control;",
        '    "~^1:$" "private";',
        '    "~*^1:.*(public|s-maxage|proxy-revalidate|private)" "private";',
        '    "~^1:(?<twitcher_cc>.+)$" "private, $twitcher_cc";',
        "}",
        'map "$twitcher_private:$upstream_http_vary" $twitcher_vary {',
        "    default $upstream_http_vary;",
        '    "~^1:$" "Authorization, Access-Token";',
        '    "~^1:(?<twitcher_vy>.*\\*.*)$" "$twitcher_vy";',
        '    "~^1:(?<twitcher_vy>.+)$" "$twitcher_vy, Authorization, Access-Token";',
        "}",
        f"# auth_request {VERIFY_LOCATION}: the request {prefix}/proxy/X is verified at {prefix}/verify/X.",
        "map $request_uri $twitcher_verify_uri {",
        f'    default "{prefix}/verify/-";',
        f"    {_quote('~^' + _regex(prefix) + '/proxy/(?<twitcher_vpath>[^?]*)')} "
        f"{_quote(prefix + '/verify/$twitcher_vpath')};",
        "}",
    ]


def _app_headers(settings: TwitcherSettings, front: Front, secret: str) -> List[str]:
    return [
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        f"proxy_set_header {FRONT_HEADER} {secret};",
        f'proxy_set_header {FALLBACK_HEADER} "";',
        "proxy_set_header X-Ssl-Client-Verify " + ("$ssl_client_verify;" if front.client_ca else '"";'),
        f"proxy_connect_timeout {settings.proxy_timeout[0]:g}s;",
        f"proxy_read_timeout {settings.proxy_timeout[1] + 10:g}s;",
        f"proxy_send_timeout {settings.proxy_timeout[1] + 10:g}s;",
        "proxy_max_temp_file_size 0;",
    ]


def _data_location(index: int, service: Service, settings: TwitcherSettings) -> List[str]:
    parts = urlsplit(service.url)
    scheme = parts.scheme
    lines = [
        f"# service {service.name}: {scheme}://{parts.netloc} ({service.type})",
        f"location = {data_location(service)} {{",
        "    internal;",
        # the hand-off's headers, read before this location's own proxy_pass replaces them
        "    set $twitcher_target $upstream_http_x_twitcher_target;",
        "    set $twitcher_method $upstream_http_x_twitcher_method;",
        "    set $twitcher_private $upstream_http_x_twitcher_private;",
        "    set $twitcher_referer $upstream_http_x_twitcher_referer;",
        "    set $twitcher_forwarded_for $upstream_http_x_twitcher_forwarded_for;",
        "    set $twitcher_forwarded_proto $upstream_http_x_twitcher_forwarded_proto;",
        "    set $twitcher_forwarded_host $upstream_http_x_twitcher_forwarded_host;",
        "    proxy_method $twitcher_method;",
        f"    proxy_pass {scheme}://twitcher_svc_{service.name}$twitcher_target;",
        "    proxy_http_version 1.1;",
        f"    proxy_set_header Host {_quote(parts.netloc.rpartition('@')[2])};",
        '    proxy_set_header Connection "";',
        # credentials for Twitcher and what Twitcher sets anew never go on
        '    proxy_set_header Authorization "";',
        '    proxy_set_header Access-Token "";',
        '    proxy_set_header Cookie "";',
        '    proxy_set_header Proxy-Authorization "";',
        '    proxy_set_header Proxy-Connection "";',
        '    proxy_set_header Trailer "";',
        f'    proxy_set_header {FRONT_HEADER} "";',
        f'    proxy_set_header {FALLBACK_HEADER} "";',
        '    proxy_set_header X-Ssl-Client-Verify "";',
        "    proxy_set_header Referer $twitcher_referer;",
        '    proxy_set_header Accept-Encoding "";',
        "    proxy_set_header X-Forwarded-For $twitcher_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $twitcher_forwarded_proto;",
        "    proxy_set_header X-Forwarded-Host $twitcher_forwarded_host;",
        "    proxy_buffering off;",
        f"    proxy_buffer_size {DATA_BUFFER};",
        f"    proxy_buffers 4 {DATA_BUFFER};",  # unused unbuffered, but nginx -t checks their sizes
        f"    proxy_busy_buffers_size {DATA_BUFFER};",
        "    proxy_request_buffering on;",
        "    proxy_intercept_errors off;",
        f"    proxy_connect_timeout {settings.proxy_timeout[0]:g}s;",
        f"    proxy_read_timeout {settings.proxy_timeout[1]:g}s;",
        f"    proxy_send_timeout {settings.proxy_timeout[1]:g}s;",
        "    proxy_hide_header Location;",
        "    proxy_hide_header Content-Location;",
        "    proxy_hide_header Link;",
        "    proxy_hide_header Cache-Control;",
        "    proxy_hide_header Vary;",
        f"    add_header Location $twitcher_location_{index} always;",
        f"    add_header Content-Location $twitcher_content_location_{index} always;",
        f"    add_header Link $twitcher_link_{index} always;",
        "    add_header Cache-Control $twitcher_cache_control always;",
        "    add_header Vary $twitcher_vary always;",
        f"    sub_filter {_quote(_directory(service))} {_quote(_proxy_url(service, settings) + '/')};",
        "    sub_filter_once off;",
        "    sub_filter_last_modified on;",
        "    sub_filter_types " + " ".join(SUB_FILTER_TYPES) + ";",
        f"    error_page 502 = @twitcher_502_{index};",
        f"    error_page 504 = @twitcher_504_{index};",
    ]
    if scheme == "https":
        lines += [
            "    proxy_ssl_server_name on;",
            f"    proxy_ssl_name {_quote(parts.hostname or '')};",
        ]
        if service.verify is False:
            lines.append("    proxy_ssl_verify off;")
        else:
            ca = service.verify if isinstance(service.verify, str) else SYSTEM_CA_BUNDLE
            lines += ["    proxy_ssl_verify on;", f"    proxy_ssl_trusted_certificate {_quote(ca)};"]
    lines.append("}")
    return lines


def _indent(lines: Sequence[str], depth: int = 1) -> List[str]:
    return [("    " * depth + line) if line else "" for line in lines]


def nginx_config(services: Sequence[Service], settings: TwitcherSettings, front: Front) -> str:
    """The whole ``http``-context include for ``services``; needs ``twitcher.front_secret``."""
    if not settings.front_secret:
        raise ValueError("the generated configuration proves itself with twitcher.front_secret: set it "
                         "(TWITCHER_FRONT_SECRET) to the value Twitcher has")
    if bool(front.tls_cert) != bool(front.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if front.client_ca and not front.tls_cert:
        raise ValueError("--client-ca needs --tls-cert and --tls-key")
    secret = _quote(settings.front_secret)
    prefix = settings.protected_path
    services = sorted(services, key=lambda s: s.name)
    names = ", ".join(s.name for s in services) or "none"
    out = [
        f"# Twitcher {__version__} data plane (twitcher.data_plane = nginx), by twitcherctl nginx-config.",
        f"# Services: {names}.",
        "# Regenerate and reload after registering or unregistering a service (or changing its URL):",
        "#   twitcherctl nginx-config ... > /etc/nginx/conf.d/twitcher.conf && nginx -t && nginx -s reload",
        "# Until then a new service works through Twitcher alone (slower, not wrong).",
        "# It holds the front secret: keep it readable by root and nginx only.",
        "",
        "upstream twitcher_app {",
        f"    server {front.app};",
        f"    keepalive {APP_KEEPALIVE};",
        "}",
    ]
    for service in services:
        out += [f"upstream twitcher_svc_{service.name} {{", f"    server {_upstream_host(service)};",
                f"    keepalive {SERVICE_KEEPALIVE};", "}"]
    out += _common_maps(settings)
    for index, service in enumerate(services):
        out += _service_maps(index, service, settings)
    tls = bool(front.tls_cert)
    server = [
        f"listen {front.listen}{' ssl' if tls else ''};",
        "server_name _;",
        "server_tokens off;",
        f"client_max_body_size {settings.max_request_body};",
        f"client_body_buffer_size {min(settings.max_request_body, 1024 * 1024)};",
    ]
    if tls:
        server += [f"ssl_certificate {_quote(front.tls_cert)};", f"ssl_certificate_key {_quote(front.tls_key)};"]
        if front.client_ca:
            server += [f"ssl_client_certificate {_quote(front.client_ca)};", "ssl_verify_client optional;",
                       "ssl_verify_depth 3;"]
    too_large = RequestTooLarge(f"The request body is larger than {settings.max_request_body} bytes.")
    server += ["# nginx's own refusal of a body over the limit, as Twitcher words it",
               "error_page 413 @twitcher_413;", "location @twitcher_413 {", "    default_type text/xml;",
               "    charset utf-8;", f"    return 413 {_quote(exception_report(too_large).decode('utf-8'))};", "}"]
    app_headers = _app_headers(settings, front, secret)
    server += ["", "# Twitcher's own routes (/, /health, /RPC2 ...): never the front secret."]
    server += ["location / {", "    proxy_pass http://twitcher_app;"]
    server += _indent([h for h in app_headers if FRONT_HEADER not in h]) + [f'    proxy_set_header {FRONT_HEADER} "";']
    server += ["}", "", f"# Every request under {prefix} is judged by Twitcher, which may hand data back to nginx."]
    for match in (f"= {prefix}", f"{prefix}/"):
        server += [f"location {match} {{", "    proxy_pass http://twitcher_app;"] + _indent(app_headers) + ["}"]
    verify_headers = [
        "proxy_pass_request_body off;",
        'proxy_set_header Content-Length "";',
        "proxy_set_header X-Original-Method $request_method;",
        "proxy_set_header X-Original-URI $request_uri;",
    ]
    server += ["", f"# auth_request: {prefix}/verify/<name>[/<extra>], or {VERIFY_LOCATION} for "
               f"{prefix}/proxy/... URIs."]
    server += [f"location {prefix}/verify/ {{", "    internal;", "    proxy_pass http://twitcher_app;"]
    server += _indent(app_headers + verify_headers) + ["}"]
    server += [f"location = {VERIFY_LOCATION} {{", "    internal;",
               "    proxy_pass http://twitcher_app$twitcher_verify_uri;"]
    server += _indent(app_headers + verify_headers) + ["}"]
    server += ["", "# A hand-off for a service this file does not know: back to Twitcher, which forwards it itself.",
               f"location {DATA_LOCATION} {{", "    internal;",
               "    set $twitcher_method $upstream_http_x_twitcher_method;",
               "    proxy_method $twitcher_method;",
               "    proxy_pass http://twitcher_app$request_uri;"]
    server += _indent([h for h in app_headers if FALLBACK_HEADER not in h] + [f"proxy_set_header {FALLBACK_HEADER} 1;"])
    server += ["}"]
    for index, service in enumerate(services):
        server += [""] + _data_location(index, service, settings) + _errors(index, service)
    out += ["", "server {"] + _indent(server) + ["}", ""]
    return "\n".join(out)
