"""A real pygeoapi (OGC API - Processes and Features) for end-to-end tests, configured in a temp dir.

pygeoapi reads its configuration and OpenAPI document from files named by environment variables
when ``pygeoapi.flask_app`` is first imported, so one Python process holds one pygeoapi: the
fixture that serves it is session-scoped. It runs the built-in ``hello-world`` process, sync and
async through the TinyDB job manager, and one GeoJSON feature collection (``obs``, editable so
that transactions exist to be refused). Every request it receives is recorded, so that a test can
show that a refused request never reached it.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import List, Tuple

import yaml

#: The example collection: pygeoapi's observation points, as GeoJSON.
OBSERVATIONS = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": f"obs-{n}", "geometry": {"type": "Point", "coordinates": [lon, lat]},
         "properties": {"id": f"obs-{n}", "stn_id": stn, "value": value}}
        for n, (lon, lat, stn, value) in enumerate([(-75.0, 45.0, 35, 89.9), (-76.2, 45.4, 35, 93.9),
                                                    (-79.4, 43.7, 2147, 103.5)], start=1)
    ],
}


def pygeoapi_config(base_url: str, workdir: Path) -> dict:
    data = workdir / "obs.geojson"
    data.write_text(json.dumps(OBSERVATIONS), encoding="utf-8")
    (workdir / "outputs").mkdir(exist_ok=True)
    contact = {k: "test" for k in ("name", "position", "address", "city", "stateorprovince", "postalcode",
                                   "country", "phone", "fax", "hours", "instructions")}
    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": 0},
            "url": base_url,
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "languages": ["en-US"],
            "pretty_print": False,
            "limits": {"default_items": 10, "max_items": 50},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OSM"},
            "manager": {"name": "TinyDB", "connection": str(workdir / "jobs.db"),
                        "output_dir": str(workdir / "outputs")},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {"title": "Twitcher test", "description": "pygeoapi behind Twitcher",
                               "keywords": ["test"], "keywords_type": "theme",
                               "terms_of_service": "https://example.org", "url": "https://example.org"},
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "test", "url": "https://example.org"},
            "contact": {**contact, "email": "test@example.org", "url": "https://example.org",
                        "role": "pointOfContact"},
        },
        "resources": {
            "obs": {
                "type": "collection",
                "title": "Observations",
                "description": "Observation points",
                "keywords": ["observations"],
                "extents": {"spatial": {"bbox": [-180, -90, 180, 90],
                                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
                "providers": [{"type": "feature", "name": "GeoJSON", "data": str(data), "id_field": "id",
                               "editable": True}],
            },
            "hello-world": {"type": "process", "processor": {"name": "HelloWorld"}},
        },
    }


class PygeoapiBackend:
    """The pygeoapi WSGI app behind a recorder of (method, path) pairs; build it with :meth:`configure`."""

    def __init__(self) -> None:
        self.app = None
        self.requests: List[Tuple[str, str]] = []
        self._lock = threading.Lock()

    def configure(self, base_url: str, workdir: Path) -> None:
        """Write the configuration for ``base_url`` and import pygeoapi's Flask app (once per process)."""
        config = pygeoapi_config(base_url, workdir)
        config_path = workdir / "pygeoapi-config.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        from pygeoapi.openapi import get_oas

        openapi_path = workdir / "pygeoapi-openapi.yml"
        openapi_path.write_text(yaml.safe_dump(get_oas(config), default_flow_style=False), encoding="utf-8")
        os.environ["PYGEOAPI_CONFIG"] = str(config_path)
        os.environ["PYGEOAPI_OPENAPI"] = str(openapi_path)
        from pygeoapi.flask_app import APP

        self.app = APP.wsgi_app

    def seen(self, fragment: str) -> List[Tuple[str, str]]:
        """The recorded requests whose path contains ``fragment``."""
        with self._lock:
            return [r for r in self.requests if fragment in r[1]]

    def __call__(self, environ, start_response):
        with self._lock:
            self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting"]
        return self.app(environ, start_response)
