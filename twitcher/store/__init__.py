"""The token and service store, chosen by the URL scheme of ``twitcher.db_url``.

The store is built once at include time and kept in the registry; requests reach it through
``request.registry.store`` (a plain attribute: a reified request method would make Pyramid
build a new class for every request). Backends are imported lazily so that one missing driver does not break the other.
"""
from __future__ import annotations

from .base import ServiceStore, Store, TokenStore

__all__ = ["Store", "TokenStore", "ServiceStore", "open_store", "includeme"]


def open_store(db_url: str) -> Store:
    """A store for ``sqlite://...`` or ``mongodb://...`` (``mongodb+srv://`` too)."""
    if db_url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return SQLiteStore(db_url)
    if db_url.startswith(("mongodb://", "mongodb+srv://")):
        from .mongodb import MongoStore

        return MongoStore(db_url)
    raise ValueError(f"no store backend for {db_url!r}")


def includeme(config) -> None:
    config.registry.store = open_store(config.registry.twitcher.db_url)
