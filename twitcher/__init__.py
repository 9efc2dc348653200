"""Twitcher: a security proxy for OGC Web Services."""
from pyramid.config import Configurator

__version__ = "0.5.0"


def main(global_config, **settings):
    """The WSGI application: one ``include`` per concern, each switched by its setting."""
    with Configurator(settings=settings) as config:
        config.include(".settings")
        config.include(".store")
        config.include(".status")
        features = config.registry.twitcher
        config.include(".ows.exceptions")
        config.include(".federation")
        config.include(".cors")  # on when twitcher.cors_allow_origins is set
        config.include(".ops")  # metrics and access log, when on: after .store, whose store it times
        if features.ows_security:
            config.include(".tweens")
        if features.ows_proxy:
            config.include(".proxy.view")
        if features.wps:
            config.include(".wps")
        if features.rpcinterface:
            config.include(".admin.rpcinterface")
        return config.make_wsgi_app()
