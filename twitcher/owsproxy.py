"""Placeholder while this concern is being built (see the open issue)."""


def includeme(config) -> None:
    return None
