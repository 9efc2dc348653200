"""What the benchmark sends: the request types (scenarios), and where they go (targets)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests

SERVICE_NAME = "bench"
#: The same backend registered as a WMS, for the GetMap-like binary GET.
WMS_SERVICE_NAME = "bench_wms"

POST_EXECUTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<wps:Execute service="WPS" version="1.0.0" xmlns:wps="http://www.opengis.net/wps/1.0.0"
    xmlns:ows="http://www.opengis.net/ows/1.1">
  <ows:Identifier>bench.echo</ows:Identifier>
  <wps:DataInputs><wps:Input><ows:Identifier>text</ows:Identifier>
    <wps:Data><wps:LiteralData>twitcher benchmark</wps:LiteralData></wps:Data></wps:Input></wps:DataInputs>
  <wps:ResponseForm><wps:ResponseDocument><wps:Output><ows:Identifier>output</ows:Identifier></wps:Output>
  </wps:ResponseDocument></wps:ResponseForm>
</wps:Execute>
"""
GET_CAPABILITIES = "?service=WPS&request=GetCapabilities"
GET_EXECUTE = "?service=WPS&version=1.0.0&request=Execute&identifier=bench.echo&DataInputs=text=hello;n=1"
GET_EXECUTE_RAW = GET_EXECUTE + "&RawDataOutput=echo"
GET_MAP = ("?service=WMS&version=1.3.0&request=GetMap&layers=bench&styles=&crs=EPSG:4326"
           "&bbox=-90,-180,90,180&width=256&height=256&format=image/png")


def register(store, backend_url: str) -> str:
    """The fake backend's two services (its WPS as :data:`SERVICE_NAME`, its ``/wms`` as
    :data:`WMS_SERVICE_NAME`) and a new two-hour token, saved in ``store``; the token."""
    from twitcher.services import service_from_registration
    from twitcher.tokens import new_token

    store.save_service(service_from_registration(backend_url + "/wps", {"name": SERVICE_NAME}))
    store.save_service(service_from_registration(backend_url + "/wms", {"name": WMS_SERVICE_NAME, "type": "wms"}))
    token, record = new_token(2)
    store.save_token(record)
    return token


@dataclass(frozen=True)
class Scenario:
    """One request type, sent the same way to the backend directly and through Twitcher."""

    key: str
    label: str
    method: str
    query: str
    auth_via: str  # where the token goes: "query", "header" or "" (none)
    direct_status: int
    proxy_status: int
    target: float  # the least acceptable ratio Twitcher / direct
    service: str = "wps"  # "wms": sent to the backend's /wms, registered as WMS_SERVICE_NAME
    #: The least acceptable ratio Twitcher in the nginx data plane / direct, if the issue sets one.
    nginx_target: Optional[float] = None


SCENARIOS = (
    Scenario("getcaps", "GetCapabilities (public, rewritten)", "GET", GET_CAPABILITIES, "", 200, 200, 0.4),
    Scenario("execute_get", "GET Execute, token in query", "GET", GET_EXECUTE, "query", 200, 200, 0.4),
    Scenario("execute_post", "POST Execute, Bearer token", "POST", "", "header", 200, 200, 0.4),
    # The direct baseline of a rejection is the same request answered by the unprotected backend.
    Scenario("rejected", "GET Execute without token (401)", "GET", GET_EXECUTE, "", 200, 401, 0.3),
    # The output itself, no ExecuteResponse to rewrite or job to record: nginx carries it in the nginx plane.
    Scenario("execute_raw", "GET Execute, raw output, token in query", "GET", GET_EXECUTE_RAW, "query", 200, 200,
             0.4, nginx_target=0.6),
    # A 64 KiB binary answer: carried by Twitcher in the Python plane, by nginx in the nginx plane.
    Scenario("getmap", "GetMap-like binary GET (64 KiB), token in query", "GET", GET_MAP, "query", 200, 200, 0.3,
             service="wms", nginx_target=0.6),
)
#: The targets that are nginx: the nginx data plane (Twitcher behind the generated configuration)
#: and a plain nginx proxy_pass to the backend, the download's yardstick.
NGINX_TARGETS = ("twitcher_nginx", "nginx_plain")



@dataclass
class Targets:
    direct: str  # the backend's OWS endpoint
    proxy: str  # the same service through Twitcher
    token: str
    body_file: Path
    #: The same service through a second Twitcher with metrics and the access log on, if any.
    ops_proxy: Optional[str] = None
    #: The same service through nginx running the generated configuration (nginx data plane).
    nginx_proxy: Optional[str] = None
    #: The backend's endpoint through a plain nginx proxy_pass (download only).
    plain_nginx: Optional[str] = None

    @property
    def bases(self) -> Dict[str, str]:
        """Each target's OWS endpoint by name: direct, twitcher and (when started) twitcher_ops
        and twitcher_nginx."""
        bases = {"direct": self.direct, "twitcher": self.proxy}
        if self.ops_proxy:
            bases["twitcher_ops"] = self.ops_proxy
        if self.nginx_proxy:
            bases["twitcher_nginx"] = self.nginx_proxy
        return bases

    def file_base(self, target: str) -> str:
        """Where outputs are: beside the endpoint directly, as an extra path through a proxy."""
        if target == "direct":
            return self.direct.rsplit("/", 1)[0]
        if target == "nginx_plain":
            return (self.plain_nginx or "").rsplit("/", 1)[0]
        return self.bases[target]


def endpoint(scenario: Scenario, base: str) -> str:
    """The endpoint of the scenario's service: the backend's ``/wms`` beside its ``/wps``, or the
    WMS registration through a proxy."""
    if scenario.service == "wps":
        return base
    if base.endswith("/wps"):
        return base[: -len("/wps")] + "/wms"
    return base[: -len(SERVICE_NAME)] + WMS_SERVICE_NAME


def request_for(scenario: Scenario, targets: Targets, base: str) -> Tuple[str, List[str]]:
    url = endpoint(scenario, base) + scenario.query
    headers = []
    if scenario.auth_via == "query":
        url += f"&access_token={targets.token}"
    elif scenario.auth_via == "header":
        headers.append(f"Authorization: Bearer {targets.token}")
    if scenario.method == "POST":
        headers.append("Content-Type: text/xml")
    return url, headers


def probe(scenario: Scenario, targets: Targets, base: str, expected: int) -> Optional[str]:
    """Send the scenario's request once; a problem as text, or None when the answer is as expected."""
    url, header_lines = request_for(scenario, targets, base)
    headers = dict(h.split(": ", 1) for h in header_lines)
    body = targets.body_file.read_bytes() if scenario.method == "POST" else None
    resp = requests.request(scenario.method, url, headers=headers, data=body, timeout=10)
    if resp.status_code != expected:
        return f"{scenario.key} at {base}: expected {expected}, got {resp.status_code}"
    if scenario.key == "getcaps" and base != targets.direct:
        backend_origin = targets.direct.rsplit("/", 1)[0]
        if backend_origin.encode() in resp.content or base.encode() not in resp.content:
            return f"GetCapabilities through {base}: operation URLs were not rewritten to the proxy"
    if scenario.key == "getmap" and resp.headers.get("Content-Type") != "image/png":
        return f"getmap at {base}: expected image/png, got {resp.headers.get('Content-Type')}"
    return None
