#!/usr/bin/env bash
# Quick start with twitcherctl and curl: protect a WPS, then call it with and without a token.
#   TWITCHER_URL       where Twitcher answers (default: http://localhost:8000, as `make start`)
#   WPS_URL            the WPS to protect; it offers a process "hello" with an input "name"
#   TWITCHER_PASSWORD  the admin password; twitcherctl reads it from the environment
set -euo pipefail
TWITCHER_URL=${TWITCHER_URL:-http://localhost:8000}
WPS_URL=${WPS_URL:-http://localhost:5000/wps}
PROXY="$TWITCHER_URL/ows/proxy/emu"

# 1. Register the WPS under the name "emu": from now on it is reached at /ows/proxy/emu.
twitcherctl -s "$TWITCHER_URL" -u admin register "$WPS_URL" --name emu

# 2. Mint a token that is valid for two hours (--json: the output is meant for a script).
TOKEN=$(twitcherctl -s "$TWITCHER_URL" -u admin --json gentoken -H 2 \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

# 3. GetCapabilities is public: no token needed.
curl -sSf "$PROXY?service=WPS&request=GetCapabilities" | grep -o "<ows:Identifier>hello</ows:Identifier>"

# 4. Execute without a token is refused with 401 and an ExceptionReport.
curl -sS -o /dev/null -w "without a token: %{http_code}\n" \
     "$PROXY?service=WPS&version=1.0.0&request=Execute&identifier=hello&DataInputs=name=you"

# 5. Execute with the token, as a query parameter ...
curl -sSf "$PROXY?service=WPS&version=1.0.0&request=Execute&identifier=hello&DataInputs=name=you&access_token=$TOKEN" \
     | grep -o "Hello you"

# ... or, better (it stays out of server logs), in a header.
curl -sSf -H "Authorization: Bearer $TOKEN" \
     "$PROXY?service=WPS&version=1.0.0&request=Execute&identifier=hello&DataInputs=name=you" \
     | grep -o "Hello you"
