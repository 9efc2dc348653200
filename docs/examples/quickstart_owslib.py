"""Quick start with Python: mint a token over XML-RPC, then run a WPS process with OWSLib.

Environment: TWITCHER_URL (default http://localhost:8000), WPS_URL (the WPS to protect, with a
process "hello"), TWITCHER_PASSWORD (the admin password).
"""
import base64
import os
import xmlrpc.client

from owslib.wps import WebProcessingService

twitcher_url = os.environ.get("TWITCHER_URL", "http://localhost:8000")
wps_url = os.environ.get("WPS_URL", "http://localhost:5000/wps")
password = os.environ["TWITCHER_PASSWORD"]

# The admin side, as a portal does it for a user who has logged in to the portal:
# every call carries the admin's HTTP Basic credentials.
basic = base64.b64encode(f"admin:{password}".encode()).decode()
admin = xmlrpc.client.ServerProxy(f"{twitcher_url}/RPC2", headers=[("Authorization", f"Basic {basic}")])
service = admin.register_service(wps_url, {"name": "emu"})
print("registered", service["name"], "->", service["url"])
token = admin.generate_token(2)["access_token"]  # valid for 2 hours

# The user side: an ordinary OWSLib client with one extra header.
wps = WebProcessingService(f"{twitcher_url}/ows/proxy/emu", headers={"Access-Token": token}, timeout=30)
print("processes:", ", ".join(process.identifier for process in wps.processes))
execution = wps.execute("hello", inputs=[("name", "you")], mode="sync")
print("status:", execution.status)
print("output:", execution.processOutputs[0].data[0])
