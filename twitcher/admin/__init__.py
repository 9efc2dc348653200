"""Administration: the XML-RPC admin API, its Basic Auth, and the ``twitcherctl`` command."""
