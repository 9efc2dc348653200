"""The WSGI application object for servers that import one: ``gunicorn twitcher.wsgi:application``.

``TWITCHER_INI`` names the ini file (default ``production.ini`` in the working directory); its
``[app:main]`` builds the application and its logging sections configure logging, as with
``pserve``. Preferred over ``gunicorn --paste``: with ``--paste`` gunicorn takes the ini as its
own logging configuration and then formats an access-log record for every request, even when no
access log is written (about 6% of a worker's CPU in ``make bench``).

``application`` is built on first access (PEP 562 module ``__getattr__``), in each worker after
gunicorn forks, so importing this module (documentation, tests) reads no ini file.
"""
from __future__ import annotations

import os

from pyramid.paster import get_app, setup_logging

INI_VARIABLE = "TWITCHER_INI"
DEFAULT_INI = "production.ini"


def load(ini_path: str):
    """Configure logging from ``ini_path`` and return its ``[app:main]`` WSGI application."""
    setup_logging(ini_path)
    return get_app(ini_path, "main")


def __getattr__(name: str):
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()["application"] = load(os.path.abspath(os.environ.get(INI_VARIABLE, DEFAULT_INI)))
    return app
