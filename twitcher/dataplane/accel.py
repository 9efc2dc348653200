"""The X-Accel hand-off: Twitcher judged the request, nginx carries the answer's bytes.

The proxy view (:func:`twitcher.proxy.view.owsproxy_view`) asks :func:`hand_off` once the request
has passed the security check and its backend URL and headers are built, before anything is sent.
When the answer is *data* (see below) and the request came through the front nginx, the view
answers with ``X-Accel-Redirect`` to the service's internal location of the generated
configuration (:mod:`twitcher.dataplane.nginxconf`) and with headers that tell nginx the method,
the backend path and query, and the ``X-Forwarded-*`` and ``Referer`` values to send: all computed
by the code that serves the Python data plane, so that both planes forward the same request.

Which answers are data. Only answers that need neither rewriting nor recording, decided by what
was asked, since the answer is not known yet:

* at an OWS service root: WMS ``GetMap``, ``GetLegendGraphic``, ``GetFeatureInfo``, WCS
  ``GetCoverage``, WFS ``GetFeature``, and a WPS ``Execute`` asking for a raw output
  (``RawDataOutput``; WPS 2.0 ``response="raw"`` with ``mode="sync"``), which creates no job;
* below a service root (outputs): ``GET``/``HEAD`` of a file whose name has a suffix that is not
  a document's (:data:`DOCUMENT_SUFFIXES`: ``.xml``, ``.json``, ``.html`` ...): PyWPS status
  documents (``<uuid>.xml``) stay with Twitcher, ``result.nc`` goes to nginx;
* OGC API: ``GET``/``HEAD`` of a coverage, a map, a tile, or a file with a data suffix, unless
  ``f`` asks for JSON or HTML; job creations, job lists and job documents stay with Twitcher.

Everything else (capabilities, DescribeProcess, ExecuteResponse and status documents, OGC API
JSON, unknown requests) is answered by Twitcher as in the Python plane. The rule fails safe twice:
a request it does not know is Twitcher's, and the generated nginx configuration still maps the
service's URL in any XML, JSON or HTML answer nginx carries (``sub_filter``) and drops or maps
headers that name the backend, so a data request answered by a document cannot show the backend.

A request whose headers the Python plane would edit beyond what the generated configuration does
(a token in an unusual header, an ``X-Ssl-*`` header it does not clear) stays with Twitcher too.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, List, Optional, Tuple
from urllib.parse import unquote_plus, urlsplit

from lxml import etree
from pyramid.response import Response

from ..ogcapi import OGCAPI
from ..ops.record import DECISION_KEY
from ..ows.request import xml_parser
from ..services import Service
from ..tweens import ACCESS_ATTR, DECISION_ATTR
from .front import FRONT_HEADER, from_front

log = logging.getLogger(__name__)

#: Where the generated configuration's internal data locations live: ``<this><name>/<key>``.
DATA_LOCATION = "/_twitcher/data/"
#: The header the generated configuration adds when it sends a hand-off back to Twitcher because
#: it has no location for it (a service registered or changed since the configuration was made).
FALLBACK_HEADER = "X-Twitcher-Fallback"
_FALLBACK_ENVIRON = "HTTP_" + FALLBACK_HEADER.upper().replace("-", "_")

#: (service type, request) pairs whose answer is data.
DATA_OPERATIONS = frozenset({
    ("wms", "getmap"), ("wms", "getlegendgraphic"), ("wms", "getfeatureinfo"),
    ("wcs", "getcoverage"), ("wfs", "getfeature"),
})
#: File suffixes of documents that may hold backend links: such files stay with Twitcher.
DOCUMENT_SUFFIXES = frozenset({
    "xml", "json", "geojson", "jsonld", "html", "htm", "xhtml", "gml", "kml", "xsd", "rdf", "atom", "wsdl",
})
#: OGC API path segments whose answer is data (with ``tiles/.../<number>``).
OGCAPI_DATA_SEGMENTS = frozenset({"coverage", "map"})
_DOCUMENT_FORMATS = ("json", "html", "geojson", "jsonld", "xml")

#: Request headers that the generated configuration clears, sets, or takes from this hand-off's
#: headers; a client header the Python plane drops and that is not here keeps the request here.
NGINX_HANDLED = frozenset({
    "host", "connection", "keep-alive", "te", "upgrade", "transfer-encoding", "content-length", "expect",
    "proxy-authorization", "proxy-connection", "trailer", "cookie", "authorization", "access-token",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "referer", "accept-encoding",
    FRONT_HEADER.lower(), FALLBACK_HEADER.lower(), "x-ssl-client-verify",
})
_WPS_RAW = ("RawDataOutput",)


def service_key(service: Service) -> str:
    """A short digest of what nginx's upstream for ``service`` is made of (scheme, host, port, TLS
    verification): a configuration generated before the service changed has no location for it."""
    parts = urlsplit(service.url)
    text = f"{parts.scheme}://{parts.netloc.lower()}|{service.verify}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def data_location(service: Service) -> str:
    """The internal location of the generated configuration that forwards to ``service``."""
    return f"{DATA_LOCATION}{service.name}/{service_key(service)}"


def _suffix(path: str) -> Optional[str]:
    name = unquote_plus(path.rstrip("/").rpartition("/")[2])
    stem, dot, suffix = name.rpartition(".")
    return suffix.lower() if dot and stem and suffix else None


def is_data_path(extra_path: str) -> bool:
    """True for a file name with a suffix that is not a document's (``result.nc``, not ``x.xml``)."""
    suffix = _suffix(extra_path)
    return suffix is not None and suffix not in DOCUMENT_SUFFIXES


def _query_value(query_string: str, key: str) -> Optional[str]:
    for pair in query_string.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name).strip().lower() == key:
            return unquote_plus(value).strip().lower()
    return None


def _ogcapi_data(extra_path: Optional[str], query_string: str) -> bool:
    if not extra_path:
        return False
    segments = [unquote_plus(s).lower() for s in extra_path.split("/") if s]
    if not segments:
        return False
    last = segments[-1]
    data = last in OGCAPI_DATA_SEGMENTS or (last.isdigit() and "tiles" in segments) or is_data_path(extra_path)
    fmt = _query_value(query_string, "f")
    return data and not (fmt and fmt.startswith(_DOCUMENT_FORMATS))


def _raw_execute(request) -> bool:
    """True for a WPS Execute whose answer is the raw output itself (no ExecuteResponse, no job)."""
    if request.method == "GET":
        return _query_value(request.environ.get("QUERY_STRING", ""), "rawdataoutput") is not None
    try:  # the tween parsed it already (bounded, no DOCTYPE); here only its response form is read
        root = etree.fromstring(request.body, xml_parser())
    except etree.XMLSyntaxError:
        return False
    if root.get("response") == "raw":  # WPS 2.0
        return root.get("mode", "sync") == "sync"
    return any(etree.QName(el).localname in _WPS_RAW for el in root.iterfind("{*}ResponseForm/*"))


def is_data(request, service: Service, extra_path: Optional[str]) -> bool:
    """True when the answer to this checked request needs no rewriting and no recording."""
    method = request.method
    decision = getattr(request, DECISION_ATTR, None)
    if decision is None or method not in ("GET", "HEAD", "POST"):
        return False
    query_string = request.environ.get("QUERY_STRING", "")
    if service.type == OGCAPI:
        return method != "POST" and decision.answer_kind is None and _ogcapi_data(extra_path, query_string)
    if extra_path is not None:
        return method != "POST" and is_data_path(extra_path)
    note = request.environ.get(DECISION_KEY)  # what the decision parsed (twitcher/ops/record.py)
    operation = getattr(note, "ows_request", None)
    if (service.type, operation) in DATA_OPERATIONS:
        return True
    return service.type == "wps" and operation == "execute" and _raw_execute(request)


def _client_header_names(environ: dict) -> Iterable[str]:
    for key in environ:
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").lower()


def _value(headers: List[Tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value
    return ""


def hand_off(request, service: Service, url: str, headers: List[Tuple[str, str]],
             extra_path: Optional[str]) -> Optional[Response]:
    """The ``X-Accel-Redirect`` answer for a data request from the front, else None (Twitcher
    forwards it itself). ``url`` and ``headers`` are what the Python plane would send."""
    environ = request.environ
    if not from_front(environ, request.registry.twitcher):
        return None
    if environ.get(_FALLBACK_ENVIRON):
        log.warning("nginx has no data location for service %s: regenerate its configuration "
                    "(twitcherctl nginx-config) and reload it", service.name)
        return None
    if not is_data(request, service, extra_path):
        return None
    kept = {key.lower() for key, _ in headers}
    edited = set(_client_header_names(environ)) - kept - NGINX_HANDLED
    if edited:
        log.debug("request headers %s need the Python plane", sorted(edited))
        return None
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    access = getattr(request, ACCESS_ATTR, None)
    headerlist = [
        ("X-Accel-Redirect", data_location(service)),
        ("X-Accel-Buffering", "no"),
        ("X-Twitcher-Target", target),
        ("X-Twitcher-Method", request.method),
        ("X-Twitcher-Private", "1" if access is not None and access.protected else "0"),
        ("X-Twitcher-Referer", _value(headers, "referer")),
        ("X-Twitcher-Forwarded-For", _value(headers, "x-forwarded-for")),
        ("X-Twitcher-Forwarded-Proto", _value(headers, "x-forwarded-proto")),
        ("X-Twitcher-Forwarded-Host", _value(headers, "x-forwarded-host")),
        ("Content-Length", "0"),
    ]
    return Response(status=200, headerlist=headerlist)
