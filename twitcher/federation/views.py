"""``<protected_path>/revoked``: this site's revoked ids, for the sites that trust it.

The list holds no secret (a revocation id is a block signature, useless without its token), so
it is public, and it lives under the protected path for one reason: an operator who exposes
``/ows`` exposes the list with it. The OWS security tween guards everything under that path, so
the list is answered by a tween of its own placed over it, before any token is asked for.
"""
from __future__ import annotations

import json
import logging
import time

from pyramid.response import Response
from pyramid.tweens import EXCVIEW, MAIN

from ..exceptions import StoreUnavailable

log = logging.getLogger(__name__)

#: Seconds a cache (or another site) may keep the list: short, since revocation waits on it.
CACHE_SECONDS = 10
LIST_PATH = "revoked"


def revoked_document(site_id, ids) -> bytes:
    """The published list: our site id (so a misconfigured URL is noticed), the ids, the time."""
    return json.dumps({"site_id": site_id, "revoked": sorted(ids), "generated_at": int(time.time())},
                      separators=(",", ":")).encode("utf-8")


def revoked_list_response(request) -> Response:
    if request.method not in ("GET", "HEAD"):
        return Response(status=405, headers={"Allow": "GET, HEAD"})
    federation = request.registry.federation
    try:
        ids = federation.revocations.store.revoked_ids()
    except StoreUnavailable:
        # No list is better than a short one: the other sites keep their last copy and,
        # past their grace period, refuse our tokens.
        response = Response(json_body={"error": "store unavailable"}, status=503)
        response.headers["Cache-Control"] = "no-store"
        return response
    response = Response(body=revoked_document(federation.site_id, ids), content_type="application/json")
    response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    return response


def revoked_list_tween_factory(handler, registry):
    """Answer ``<protected_path>/revoked`` (exactly) before the OWS security tween asks for a token."""
    path = registry.twitcher.protected_path + "/" + LIST_PATH

    def revoked_list_tween(request):
        if request.path_info == path:
            return revoked_list_response(request)
        return handler(request)

    return revoked_list_tween


def add_revoked_list(config) -> None:
    # Over the OWS security tween, so that this public document needs no token (MAIN is the
    # fallback when that tween is off, twitcher.ows_security = false); under EXCVIEW, so that
    # anything unexpected is still rendered by twitcher.ows.exceptions.
    config.add_tween("twitcher.federation.views.revoked_list_tween_factory",
                     over=("twitcher.tweens.ows_security_tween_factory", MAIN), under=EXCVIEW)
