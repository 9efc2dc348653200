"""Operations: the production server runner, Prometheus metrics and the JSON access log.

The metrics and the access log share one tween (:mod:`twitcher.ops.tween`), added only when
one of them is on, so that a Twitcher with both off pays nothing for them.
"""
from __future__ import annotations


def includeme(config) -> None:
    settings = config.registry.twitcher
    if not (settings.metrics or settings.access_log):
        return
    config.include(".tween")
