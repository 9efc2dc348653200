"""What an admin portal does with Twitcher's XML-RPC API, using only the standard library.

Environment: TWITCHER_URL (default http://localhost:8000), WPS_URL (a WPS to register),
TWITCHER_PASSWORD (the admin password).
"""
import base64
import os
import xmlrpc.client

twitcher_url = os.environ.get("TWITCHER_URL", "http://localhost:8000")
wps_url = os.environ.get("WPS_URL", "http://localhost:5000/wps")
password = os.environ["TWITCHER_PASSWORD"]

# Basic credentials in a header rather than in the URL: xmlrpc.client repeats the URL in its
# error messages, and those end up in logs.
basic = base64.b64encode(f"admin:{password}".encode()).decode()
twitcher = xmlrpc.client.ServerProxy(f"{twitcher_url}/RPC2", headers=[("Authorization", f"Basic {basic}")])

# Register a service; data is optional, the name is derived from the URL when absent.
service = twitcher.register_service(wps_url, {"name": "emu", "type": "wps"})
print(service)

# Look services up and list them.
print(twitcher.get_service_by_name("emu")["url"] == wps_url)
print(twitcher.get_service_by_name("nothing-here"))  # {} for an unknown name
print([s["name"] for s in twitcher.list_services()])

# A token for a user who logged in to the portal: 8 hours, with data for the internal WPS.
token = twitcher.generate_token(8, {"DATA_TOKEN": "user-archive-credential"})
print(sorted(token))  # ['access_token', 'expires_at']

# Bad arguments come back as a Fault whose faultString says what is wrong.
try:
    twitcher.generate_token(-1)
except xmlrpc.client.Fault as fault:
    print(fault.faultCode, fault.faultString)

# When the user logs out: revoke the token, on every Twitcher instance at once.
print(twitcher.revoke_token(token["access_token"]))  # True
print(twitcher.revoke_token(token["access_token"]))  # False: revoked already

# Wrong credentials are an HTTP error, not a Fault.
stranger = xmlrpc.client.ServerProxy(f"{twitcher_url}/RPC2")
try:
    stranger.list_services()
except xmlrpc.client.ProtocolError as error:
    print(error.errcode)  # 401

print(twitcher.unregister_service("emu"))  # True
