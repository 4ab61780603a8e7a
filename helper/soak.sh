#!/usr/bin/env bash
# Soak test: the release proxy, as users run it (default flags, access log to a file),
# under many concurrent clients of mixed traffic for a long time, on loopback only.
# Run `helper/soak.sh --help` for usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=1800
CLIENTS=200
WORKERS=0
WARMUP=""
EXTRA=()

usage() {
  cat <<EOF2
Usage: helper/soak.sh [options] [-- extra proxy flags]

Builds target/release/proxy and the soak driver (helper/soak.rs), starts the proxy on a
free loopback port with default flags and the access log written to a temporary file,
and drives it with concurrent clients of mixed traffic (keep-alive GETs, a new
connection per GET, CONNECT tunnels, 1 MiB downloads and uploads, slow readers that
outlast --timeout, and clients that abort mid-download or mid-upload) against origins
the driver runs itself. Reports requests served per kind, unexpected errors (target 0),
and the proxy's RSS and open fds at start, after warm-up and at the end (flat within
10%). Then stops the proxy with SIGTERM and checks that it exits 0.

Exit status: 0 when there was no unexpected error, memory and fds stayed flat, and
the proxy stopped cleanly; 1 otherwise.

Options:
  --duration SECS   how long the load runs  [$DURATION]
  --clients N       concurrent clients  [$CLIENTS]
  --workers N       proxy --num-workers (0 = one per core)  [$WORKERS]
  --warmup SECS     when the warm-up sample is taken  [10% of the duration, 5..60 s]
  -h, --help        this text
EOF2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$ROOT"
cargo build --release --bin proxy --example soak
TMP=$(mktemp -d)
PROXY_PID=""
cleanup() {
  if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then kill -KILL "$PROXY_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# Each client may hold two sockets on the proxy (client side, upstream side).
ulimit -n 65536 2>/dev/null || true
target/release/proxy --port 0 --port-file "$TMP/port" --num-workers "$WORKERS" \
  --log-file "$TMP/access.log" --open-file-limit 65536 "${EXTRA[@]}" &
PROXY_PID=$!
for _ in $(seq 1 200); do
  [ -s "$TMP/port" ] && break
  kill -0 "$PROXY_PID" 2>/dev/null || { echo "soak: the proxy exited at start" >&2; exit 1; }
  sleep 0.05
done
PORT=$(head -n1 "$TMP/port")
echo "soak: proxy pid $PROXY_PID on 127.0.0.1:$PORT, access log $TMP/access.log"

status=0
WARM_ARGS=()
[ -n "$WARMUP" ] && WARM_ARGS=(--warmup "$WARMUP")
target/release/examples/soak --proxy "127.0.0.1:$PORT" --pid "$PROXY_PID" \
  --duration "$DURATION" --clients "$CLIENTS" "${WARM_ARGS[@]}" || status=1

lines=$(wc -l < "$TMP/access.log")
echo "== access log: $lines lines"
echo "== error codes in the access log (injected aborts show as client_closed)"
grep -oE ' - [a-z_]+$' "$TMP/access.log" | sort | uniq -c | sort -rn | head -20 || true

kill -TERM "$PROXY_PID"
code=0
for _ in $(seq 1 300); do
  kill -0 "$PROXY_PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$PROXY_PID" 2>/dev/null; then
  echo "soak: the proxy did not exit within 30 s of SIGTERM" >&2
  status=1
else
  wait "$PROXY_PID" || code=$?
  echo "== proxy exit status after SIGTERM: $code"
  [ "$code" -eq 0 ] || status=1
fi
PROXY_PID=""
exit $status
