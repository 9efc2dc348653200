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
    links = {"health": request.route_url("health")}
    if features.ows_proxy:
        links["ows_proxy"] = request.application_url + features.protected_path + "/proxy/{service_name}"
    if features.wps:
        links["wps"] = request.application_url + features.protected_path + "/wps"
    if features.rpcinterface:
        links["rpcinterface"] = request.application_url + "/RPC2"
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
