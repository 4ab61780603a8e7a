#!/usr/bin/env bash
# Loads a URL in headless Chromium that finds its proxy through a PAC URL, and prints the DOM.
#
#   helper/chrome_with_proxy.sh PAC_URL URL [extra chromium flags...]
#   e.g. proxy --port 8899 --pac-file proxy.pac --pac-file-url-path /proxy.pac &
#        helper/chrome_with_proxy.sh http://127.0.0.1:8899/proxy.pac http://example.com/
#
# Uses Debian's chromium (apt-get install chromium) with the flags this closed network
# needs (no background networking); a fresh profile each run; killed after 60 s.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 PAC_URL URL [chromium flags...]" >&2
    exit 64
fi
pac_url=$1 url=$2
shift 2
chromium=$(command -v chromium || true)
[ -n "$chromium" ] || { echo "chromium not found (apt-get install chromium)" >&2; exit 69; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout --kill-after=5 60 "$chromium" \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --no-default-browser-check \
    --disable-background-networking --disable-component-update --disable-sync --disable-extensions \
    --disable-dev-shm-usage --disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable \
    --user-data-dir="$profile" --proxy-pac-url="$pac_url" "$@" --dump-dom "$url" 2>/dev/null
