"""OGC API services (Processes, Features) behind Twitcher: routes table, JSON links, problem answers.

An ``ogcapi`` service is registered with its landing page URL; requests below
``/ows/proxy/<name>/`` go below that landing page. Access is decided by HTTP method and path
template (:mod:`.routes`), never by the body; refusals are RFC 7807 problem documents
(:mod:`.problems`); links in JSON answers are sent back through the proxy (:mod:`.links`).
"""

#: The service type of OGC API services (``register_service(url, {"type": "ogcapi"})``).
OGCAPI = "ogcapi"
