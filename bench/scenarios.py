"""What the benchmark sends: the request types (scenarios), and where they go (targets)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests

SERVICE_NAME = "bench"

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


SCENARIOS = (
    Scenario("getcaps", "GetCapabilities (public, rewritten)", "GET", GET_CAPABILITIES, "", 200, 200, 0.4),
    Scenario("execute_get", "GET Execute, token in query", "GET", GET_EXECUTE, "query", 200, 200, 0.4),
    Scenario("execute_post", "POST Execute, Bearer token", "POST", "", "header", 200, 200, 0.4),
    # The direct baseline of a rejection is the same request answered by the unprotected backend.
    Scenario("rejected", "GET Execute without token (401)", "GET", GET_EXECUTE, "", 200, 401, 0.3),
)



@dataclass
class Targets:
    direct: str  # the backend's OWS endpoint
    proxy: str  # the same service through Twitcher
    token: str
    body_file: Path
    #: The same service through a second Twitcher with metrics and the access log on, if any.
    ops_proxy: Optional[str] = None

    @property
    def bases(self) -> Dict[str, str]:
        """Each target's OWS endpoint by name: direct, twitcher and (when started) twitcher_ops."""
        bases = {"direct": self.direct, "twitcher": self.proxy}
        if self.ops_proxy:
            bases["twitcher_ops"] = self.ops_proxy
        return bases

    def file_base(self, target: str) -> str:
        """Where outputs are: beside the endpoint directly, as an extra path through a proxy."""
        return self.direct.rsplit("/", 1)[0] if target == "direct" else self.bases[target]


def request_for(scenario: Scenario, targets: Targets, base: str) -> Tuple[str, List[str]]:
    url = base + scenario.query
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
    if scenario.key == "getcaps" and base == targets.proxy:
        backend_origin = targets.direct.rsplit("/", 1)[0]
        if backend_origin.encode() in resp.content or targets.proxy.encode() not in resp.content:
            return "GetCapabilities through Twitcher: operation URLs were not rewritten to the proxy"
    return None
