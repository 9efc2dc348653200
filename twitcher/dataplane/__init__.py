"""The nginx data plane: Twitcher decides, nginx carries the bytes (``twitcher.data_plane = nginx``).

A Python process pumping bytes keeps a fraction of its backend's speed; nginx keeps nearly all
of it. In this mode every request under the protected path still reaches Twitcher and is judged
by the one decision path (:func:`twitcher.tweens.decide`); what Twitcher must rewrite or record
it answers itself, and the rest it hands to nginx with ``X-Accel-Redirect``
(:mod:`~twitcher.dataplane.accel`). Operators who protect locations of their own with nginx
``auth_request`` ask the verify endpoint (:mod:`~twitcher.dataplane.verify`). The nginx
configuration is generated (:mod:`~twitcher.dataplane.nginxconf`, ``twitcherctl nginx-config``),
never written by hand. Only requests from the configured front may ask for either
(:mod:`~twitcher.dataplane.front`).
"""


def includeme(config) -> None:
    config.include(".verify")
