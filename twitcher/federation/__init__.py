"""Federation: signed Biscuit tokens that other sites verify from our public key, and revocation lists.

The pieces: :mod:`.issuers` (the trusted issuers setting), :mod:`.keys` (the signing key file),
:mod:`.biscuit` (the one module that talks to the Biscuit library), :mod:`.revocation` (revoked
ids, ours and the issuers', kept fresh by a poller), :mod:`.access` (the decision the OWS
security tween asks for) and :mod:`.views` (``<protected_path>/revoked``).
"""


def includeme(config) -> None:
    """Load the signing key and trusted keys once, and serve our revocation list."""
    from .access import build_federation
    from .views import add_revoked_list

    config.registry.federation = build_federation(config.registry.twitcher, config.registry.store)
    add_revoked_list(config)
