"""``GET /`` (what this is, where things are) and ``GET /health`` (for load balancers)."""
from __future__ import annotations

import logging

from pyramid.view import view_config

from . import __version__
from .exceptions import StoreUnavailable

log = logging.getLogger(__name__)


@view_config(route_name="home", request_method="GET", renderer="json")
def home(request) -> dict:
    features = request.registry.twitcher
    # From twitcher.url, never from the request's Host header, which the client chooses.
    base = features.public_base_url
    links = {"health": base + "/health"}
    if features.ows_proxy:
        links["ows_proxy"] = base + features.protected_path + "/proxy/{service_name}"
    if features.wps:
        links["wps"] = base + features.protected_path + "/wps"
    if features.rpcinterface:
        links["rpcinterface"] = base + "/RPC2"
    return {"name": "twitcher", "version": __version__, "links": links}


@view_config(route_name="health", request_method="GET", renderer="json")
def health(request) -> dict:
    """200 when the store answers, 503 when it does not, so a balancer can take us out."""
    try:
        request.registry.store.ping()
    except StoreUnavailable:
        request.response.status = 503
        return {"status": "unavailable", "store": "unavailable", "version": __version__}
    return {"status": "ok", "store": "ok", "version": __version__}


def includeme(config) -> None:
    config.add_route("home", "/")
    config.add_route("health", "/health")
    config.scan(__name__)
