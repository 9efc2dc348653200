"""Twitcher's own WPS: PyWPS served in-process at ``<protected_path>/wps``, token data in its environ.

The security tween guards every path under ``<protected_path>/wps`` and, when a request passes
with a token, copies the token's sanitised ``environ`` entries into the request's WSGI environ.
This module hands that environ to PyWPS unchanged (apart from keys PyWPS itself would act on),
so a process handler finds the data in ``wps_request.http_request.environ``; use
:func:`token_environ` to read it. Async jobs run in a forked child that carries its own copy of
the request, so the data travels with the job and with no other job.

PyWPS keeps its configuration in a module global (``pywps.configuration.CONFIG``): it is loaded
once, at include time, so one process serves one internal WPS.
"""
from __future__ import annotations

import configparser
import logging
import mimetypes
import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence

from lxml import etree
from pyramid.httpexceptions import HTTPNotFound
from pyramid.path import DottedNameResolver
from pyramid.request import Request
from pyramid.response import FileResponse, Response

from .exceptions import ConfigurationError, OperationNotSupported, OWSException
from .ows.request import xml_parser
from .settings import TwitcherSettings

log = logging.getLogger(__name__)

#: PyWPS copies ``PYWPS_CFG`` from the WSGI environ into ``os.environ`` (process-wide), so token
#: data must never carry keys with this prefix into PyWPS.
PYWPS_ENVIRON_PREFIX = "PYWPS_"
#: Default limit of jobs (sync and async together) running at once; ``[server] parallelprocesses``
#: in ``twitcher.wps_cfg`` overrides it. Matches the waitress threads of the ini files.
DEFAULT_PARALLEL_PROCESSES = 8
#: PyWPS processing modes that fork: the child inherits the in-memory request and its environ.
#: The ``scheduler`` mode serialises the request to JSON and would silently drop the token data.
FORKING_MODES = ("default", "multiprocessing", "detachprocessing")
#: How often, and how far apart in seconds, a status document caught mid-write is read again.
STATUS_READ_ATTEMPTS = 20
STATUS_READ_PAUSE = 0.025


def token_environ(wps_request, keys: Iterable[str]) -> Mapping[str, str]:
    """The token data among ``keys`` that reached this request (sync or async), for process handlers.

    A process names the keys it understands instead of scanning the whole environ, which also
    holds server and framework entries. Keys absent from the token are absent from the result.
    """
    http_request = getattr(wps_request, "http_request", None)
    environ = getattr(http_request, "environ", None) or {}
    return {key: environ[key] for key in keys if isinstance(environ.get(key), str)}


def default_workdir() -> Path:
    """``<tmp>/twitcher-wps-<uid>``: stable across workers of one host, private to this user."""
    return Path(tempfile.gettempdir()) / f"twitcher-wps-{os.getuid()}"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigurationError(f"twitcher.wps_workdir: {path} belongs to another user")
    return path.resolve()


def load_processes(names: Sequence[str]) -> List:
    """Resolve ``twitcher.wps_processes``: each dotted name is a list of processes or a factory of one."""
    from pywps import Process

    resolver = DottedNameResolver()
    processes = []
    for name in names:
        try:
            found = resolver.resolve(name)
        except (ImportError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"twitcher.wps_processes: cannot import {name!r}: {exc}") from None
        items = found() if callable(found) else found
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        for item in items:
            if not isinstance(item, Process):
                raise ConfigurationError(
                    f"twitcher.wps_processes: {name!r} gave {type(item).__name__}, not a pywps.Process")
        processes.extend(items)
    identifiers = [p.identifier for p in processes]
    duplicates = sorted({i for i in identifiers if identifiers.count(i) > 1})
    if duplicates:
        raise ConfigurationError(f"twitcher.wps_processes: process {duplicates[0]!r} is named twice")
    if not processes:
        raise ConfigurationError("twitcher.wps is on but twitcher.wps_processes names no processes")
    return processes


def _cfg_value(value: object) -> str:
    # PyWPS' parser interpolates '%', so a path holding one must be escaped.
    return str(value).replace("%", "%%")


def configure_pywps(settings: TwitcherSettings, workdir: Path) -> Path:
    """Load PyWPS' global configuration for this Twitcher; return the directory of outputs to serve.

    Order: PyWPS' built-in values, Twitcher's defaults (everything under ``workdir``), the
    optional ``twitcher.wps_cfg`` file, then the values Twitcher must own: the public URLs (status
    documents and outputs are fetched through Twitcher, protected by the tween) and an empty job
    queue (PyWPS stores queued jobs as JSON, which drops the request environ and its token data).
    """
    from pywps import configuration

    configuration.load_hardcoded_configuration()
    cfg = configuration.CONFIG
    base_url = settings.public_base_url + settings.protected_path + "/wps"
    defaults = {
        ("server", "workdir"): workdir / "tmp",
        ("server", "outputpath"): workdir / "outputs",
        ("server", "parallelprocesses"): DEFAULT_PARALLEL_PROCESSES,
        ("server", "maxrequestsize"): f"{settings.max_request_body}b",
        ("processing", "mode"): "multiprocessing",
        ("logging", "level"): "INFO",
        ("logging", "database"): f"sqlite:///{workdir / 'pywps-jobs.sqlite'}",
    }
    for (section, key), value in defaults.items():
        cfg.set(section, key, _cfg_value(value))
    if settings.wps_cfg:
        try:
            loaded = os.path.isfile(settings.wps_cfg) and cfg.read([settings.wps_cfg], encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigurationError(f"twitcher.wps_cfg: {settings.wps_cfg!r} is not a valid PyWPS "
                                     f"configuration: {exc}") from None
        if not loaded:
            raise ConfigurationError(f"twitcher.wps_cfg: cannot read the PyWPS configuration {settings.wps_cfg!r}")
    for (section, key), value in {
        ("server", "url"): base_url,
        ("server", "outputurl"): base_url + "/outputs/",
        ("server", "maxprocesses"): 0,
    }.items():
        cfg.set(section, key, _cfg_value(value))

    mode = cfg.get("processing", "mode").strip().lower()
    if mode not in FORKING_MODES:
        raise ConfigurationError(
            f"twitcher.wps_cfg: [processing] mode = {mode} is not supported: token data reaches async "
            f"jobs only in a forked process ({', '.join(FORKING_MODES)})")
    outputs = Path(cfg.get("server", "outputpath"))
    for path in (Path(cfg.get("server", "workdir")), outputs):
        path.mkdir(parents=True, exist_ok=True)
    _prepare_job_database(cfg.get("logging", "database"))
    return outputs.resolve()


def _prepare_job_database(url: str) -> None:
    """Put a SQLite job database in WAL mode (it persists in the file).

    Every request writes to it from waitress threads and forked async jobs; with WAL, readers
    (job counting) do not wait for writers.
    """
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return
    connection = sqlite3.connect(url[len("sqlite:///"):], timeout=5)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def _pywps_environ(request) -> dict:
    """A copy of the request's environ as PyWPS must see it.

    PyWPS reads its endpoint from the path (``/wps``, not its REST paths ``/processes`` or
    ``/jobs``), so the protected prefix moves to ``SCRIPT_NAME``; ``PYWPS_*`` keys are dropped.
    """
    environ = {key: value for key, value in request.environ.items()
               if not key.upper().startswith(PYWPS_ENVIRON_PREFIX)}
    environ["SCRIPT_NAME"] = request.script_name + request.registry.twitcher.protected_path
    environ["PATH_INFO"] = "/wps"
    return environ


def wps_view(request) -> Response:
    """Hand the request to PyWPS; its answers, ExceptionReports included, go back unchanged."""
    if request.method not in ("GET", "POST"):
        raise OperationNotSupported(f"The internal WPS accepts GET and POST, not {request.method}.",
                                    locator=request.method, status=405)
    request.make_body_seekable()
    return Request(_pywps_environ(request)).get_response(request.registry.wps_service)


def _output_path(root: Path, segments: Sequence[str]) -> Optional[Path]:
    """The regular file under ``root`` that ``segments`` name, or None; nothing outside ``root``."""
    if not segments or any(s in ("", ".", "..") or "/" in s or "\\" in s or "\0" in s for s in segments):
        return None
    path = root.joinpath(*segments).resolve()
    if root not in path.parents:
        return None
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
    except OSError:
        return None
    return path


def read_status_document(path: Path, attempts: int = STATUS_READ_ATTEMPTS) -> bytes:
    """The status document at ``path`` once it is complete XML.

    PyWPS rewrites status documents in place (truncate, then write), so a poll can catch one
    empty or half written; a client must never be handed that as the job's status.
    """
    for attempt in range(attempts):
        data = path.read_bytes()
        try:
            # The hardened per-thread parser: lxml parsers must not be shared between threads.
            etree.fromstring(data, xml_parser())
            return data
        except etree.XMLSyntaxError:
            if attempt + 1 < attempts:
                time.sleep(STATUS_READ_PAUSE)
    raise OWSException("The status document is being updated; try again.", status=503)


def output_view(request) -> Response:
    """Status documents and outputs of jobs, from PyWPS' output directory."""
    root = request.registry.wps_outputs
    path = _output_path(root, request.matchdict["subpath"])
    if path is None:
        raise HTTPNotFound()
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.parent == root and path.suffix == ".xml":
        response = Response(body=read_status_document(path), content_type="text/xml")
    else:
        response = FileResponse(str(path), request=request, content_type=content_type)
    # Outputs are whatever a process wrote: never let a browser run them on Twitcher's origin.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


def includeme(config) -> None:
    """Configure PyWPS once and add the routes ``wps`` and ``wps_outputs`` under the protected path."""
    settings: TwitcherSettings = config.registry.twitcher
    try:
        from pywps import Service
    except ImportError as exc:
        raise ConfigurationError(
            f"twitcher.wps is true but PyWPS cannot be imported ({exc}): install the extra "
            "'twitcher[wps]' or set twitcher.wps = false") from None

    workdir = _private_dir(Path(settings.wps_workdir) if settings.wps_workdir else default_workdir())
    processes = load_processes(settings.wps_processes)
    config.registry.wps_outputs = configure_pywps(settings, workdir)
    config.registry.wps_service = Service(processes)
    log.info("internal WPS at %s/wps with %d processes, workdir %s",
             settings.protected_path, len(processes), workdir)

    prefix = settings.protected_path + "/wps"
    config.add_route("wps", prefix)
    config.add_route("wps_outputs", prefix + "/outputs/*subpath")
    config.add_view(wps_view, route_name="wps")
    config.add_view(output_view, route_name="wps_outputs", request_method=("GET", "HEAD"))
