#!/usr/bin/env bash
# Benchmark `proxy` against a plain TCP relay and other forward proxies, on loopback only.
# Run `helper/benchmark.sh --help` for usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER_DIR="$ROOT/helper"

DURATION=5s
WARMUP=1s
ROUNDS=3
CONNS=50
# ka-paced: the share of requests before which a connection first waits 1 ms.
PACE=0.5
IDLE_CONNS=10000
RSS_MODE=open
# Extra flags for our proxy (and proxy.py) while the rss scenario holds idle connections.
# Opening 10,000 of them can take longer than the default 10 s timeouts (more so after
# the newconn scenario's TIME_WAIT sockets): without these, connections opened first are
# closed before RSS is read, and "alive" counts fewer than were opened. The peers' own
# defaults are minutes (tinyproxy's Timeout 600 here, squid's request_timeout 5 min).
HOLD_ARGS=()
HOLD_ARGS_PROXYPY=()
ONLY=""
TARGETS_WANTED=""
PROXY_BIN="$ROOT/target/release/proxy"
BASE_BIN=""
BENCH_USER=bench
BENCH_PASS=bench
OUT_DIR="$ROOT/target/bench"
PROXYPY_BIN=""
MITMDUMP_BIN=""
INSTALL=0
KEEP_TMP=0
PROXY_CORE=0
LOAD_CORE=1
RELAY_CORE=0
TLS=0
MINT_HOSTS=100

ALL_SCENARIOS="ka ka-paced newconn 1m connect rss"
ALL_TARGETS="direct relay proxy proxy-log proxy-base proxy-2w proxy-plugins proxy-lua proxy-burro proxy.py tinyproxy squid"
# TLS interception: run only when asked for (--tls, or named in --only), with their own targets.
TLS_SCENARIOS="tls-ka tls-newconn tls-mint"
TLS_TARGETS="direct-tls tunnel proxy proxy-log proxy.py mitmdump"

usage() {
  cat <<EOF
Usage: helper/benchmark.sh [options]

Benchmarks the forward proxy against an nginx origin on loopback, with a plain
nginx TCP relay (one extra hop, no HTTP parsing: the ceiling for any proxy) and,
when installed, proxy.py 2.4.10, tinyproxy and squid. Everything listens on
127.0.0.1 only; every process started is stopped on exit.

Targets:   $ALL_TARGETS
  direct     the client talks to the nginx origin itself
  relay      the client talks to an nginx 'stream' relay as if it were the origin
  proxy      target/release/proxy, 1 worker, pinned to core $PROXY_CORE; logging off
             (--log-level e --log-file /dev/null)
  proxy-log  as proxy, but logging as users run it: the default level (INFO: one
             access-log line per request, proxy.py's format) to a --log-file in the
             temporary directory (emptied before each run); proxy-log/proxy is the
             access log's cost
  proxy-2w   target/release/proxy, 2 workers, not pinned
  proxy-base as proxy, with the --base-bin binary (e.g. a build of an earlier commit),
             for a before/after comparison in one interleaved run; only with --base-bin
  proxy-plugins  as proxy, plus --basic-auth and FilterByUpstreamHostPlugin (the chain's cost)
  proxy-lua  as proxy, plus plugin_examples/lua/add_header.lua (a Lua request handler that
             adds one header: the scripting engine's cost per request)
  proxy-burro as proxy, plus a Burro-style script directory holding only after_response.lua,
             which counts each request into kv (the issue's second scripting target)
  proxy.py   proxy.py 2.4.10 (--num-acceptors 1 --num-workers 1), pinned to core $PROXY_CORE
  tinyproxy  tinyproxy (MaxClients 2000, logging off), pinned to core $PROXY_CORE
  squid      squid (-N, no cache, no disk), pinned to core $PROXY_CORE
  The load generator and the origin run on core $LOAD_CORE, the relay on core
  $RELAY_CORE (the core of the proxy under test, so that it competes on equal terms).

Scenarios: $ALL_SCENARIOS
  ka        small GET, keep-alive, c=$CONNS (wrk; absolute-form requests to proxies)
  ka-paced  as ka, but each connection first waits 1 ms before a random --pace share of
            its requests, so that every target gets about the same request rate, below
            what the slowest can serve: its p99 is the latency a request meets, where ka's
            (every target saturated) is mostly the time to work off a queue after a stall
  newconn   small GET, one new client connection per request (Connection: close)
  1m        1 MiB downloads, keep-alive, c=$CONNS (MiB/s)
  connect   small GETs over TLS through CONNECT tunnels (hey -x http://proxy https://origin)
  rss       idle RSS after start, then RSS with --idle-conns idle client connections
            (our proxy and proxy.py run with 300 s timeouts here, so that none of them
            closes before all are open)

TLS interception scenarios (not in the default run: --tls, or --only tls / --only tls-ka,...):
  $TLS_SCENARIOS
  The origin is the same nginx serving HTTPS with a certificate (localhost, 127.0.0.1)
  from an "origin CA" made with openssl at start; every proxy verifies the origin with
  it. The client trusts (SSL_CERT_FILE, --cacert) the origin CA and the proxies' CAs.
  tls-ka      small GETs kept alive inside intercepted CONNECT tunnels, c=$CONNS (hey -x);
              columns: target CPU per request, origin CPU per request
  tls-newconn one new connection per request (hey -disable-keepalive: CONNECT plus a full
              TLS handshake with the proxy, and the proxy's own to the origin); target CPU
              per connection, origin (nginx) CPU per TLS accept (nginx stub_status counts),
              and cpu/acc: the target's CPU per connection over the origin's per TLS accept
              in the direct-tls run (nginx terminating TLS itself: the goal is <= 1.5)
  tls-mint    first requests to new host names, one after another: --mint-hosts distinct
              IP literals (127.R.x.y, fresh ones each round; the origin listens on each, its
              certificate names them all), each once over a new connection (one curl);
              median and p99 of curl's time_total, the target's CPU per new host
  (hey does not verify certificates; curl does, and falls back to -k, said in the
  output, for a target whose leaves do not verify, such as proxy.py's DNS-only SAN
  for an IP host.)
TLS targets: $TLS_TARGETS
  direct-tls the client talks TLS to the nginx origin itself (the baseline)
  tunnel     target/release/proxy without a CA: opaque CONNECT tunnels (for reference)
  proxy      target/release/proxy, 1 worker pinned to core $PROXY_CORE, logging off, intercepting
             with a CA from 'proxy --ca-generate', --ca-cert-dir, --ca-file origin CA;
             skipped when 'proxy --help' lists no --ca-generate
  proxy-log  as proxy, with the access log to a file (as the proxy-log target above)
  proxy.py   proxy.py 2.4.10 with an RSA CA and signing key made by openssl, pinned
  mitmdump   mitmproxy's mitmdump (-q, flow_detail=0; RSA CA in its confdir), pinned to
             core $PROXY_CORE; in tls-mint with upstream_cert=false, so that its leaves do
             not copy the mint origin certificate's many names

Options:
  --duration D        length of each measured run (wrk/hey syntax: 5s, 1m)  [$DURATION]
  --warmup D          unmeasured run before round 1 of each pair, 0 = none  [$WARMUP]
  --rounds N          rounds; targets are interleaved within each round  [$ROUNDS]
  --connections N     concurrent client connections  [$CONNS]
  --pace F            ka-paced: share of requests (0..1) preceded by a 1 ms wait  [$PACE]
  --only LIST         comma-separated scenarios to run; 'tls' stands for all TLS ones
                      [all but the TLS ones]
  --tls               run the TLS scenarios too (after the others)
  --mint-hosts N      new host names per round in tls-mint  [$MINT_HOSTS]
  --targets LIST      comma-separated targets to run  [all that are available]
  --proxy-bin PATH    our proxy binary  [target/release/proxy]
  --base-bin PATH     the proxy-base target's binary  [none: target skipped]
  --proxypy-bin PATH  proxy.py's 'proxy' script  [target/bench/venv-proxypy/bin/proxy]
  --mitmdump-bin PATH mitmproxy's mitmdump  [target/bench/venv-mitmproxy/bin/mitmdump]
  --idle-conns N      idle connections for the rss scenario  [$IDLE_CONNS]
  --rss-mode M        open: connect and send nothing; request: one keep-alive GET, then idle  [$RSS_MODE]
  --out-dir DIR       where results-<timestamp>.txt goes  [target/bench]
  --keep-tmp          keep the temporary directory (configs, logs)
  --install           apt-get install nginx libnginx-mod-stream wrk hey squid tinyproxy
                      openssl curl python3 (needs root), pip install proxy.py==2.4.10 into
                      target/bench/venv-proxypy and mitmproxy into target/bench/venv-mitmproxy;
                      then run. Nothing is installed without it.
  -h, --help          this text

Default run: 6 scenarios x 8 targets x 3 rounds x 5 s, about 13 minutes.
Quick check: helper/benchmark.sh --duration 3s --rounds 1 --only ka
TLS only:    helper/benchmark.sh --only tls   (3 scenarios x 6 targets x 3 rounds, about 6 minutes;
             most of tls-mint's time is proxy.py minting with the openssl binary)
EOF
}

die() { echo "benchmark.sh: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --pace) PACE=$2; shift 2 ;;
    --only) ONLY=${2//,/ }; shift 2 ;;
    --tls) TLS=1; shift ;;
    --mint-hosts) MINT_HOSTS=$2; shift 2 ;;
    --targets) TARGETS_WANTED=${2//,/ }; shift 2 ;;
    --proxy-bin) PROXY_BIN=$2; shift 2 ;;
    --base-bin) BASE_BIN=$2; shift 2 ;;
    --proxypy-bin) PROXYPY_BIN=$2; shift 2 ;;
    --mitmdump-bin) MITMDUMP_BIN=$2; shift 2 ;;
    --idle-conns) IDLE_CONNS=$2; shift 2 ;;
    --rss-mode) RSS_MODE=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --keep-tmp) KEEP_TMP=1; shift ;;
    --install) INSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer"
[[ "$PACE" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "--pace must be a number from 0 to 1"
[[ "$IDLE_CONNS" =~ ^[1-9][0-9]*$ ]] || die "--idle-conns must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*[sm]?$ ]] || die "--duration must look like 5s or 1m"
[[ "$WARMUP" =~ ^[0-9]+[sm]?$ ]] || die "--warmup must look like 1s or 0"
case "$RSS_MODE" in open|request) ;; *) die "--rss-mode must be open or request" ;; esac
if ! [[ "$MINT_HOSTS" =~ ^[1-9][0-9]*$ ]] || [ "$MINT_HOSTS" -gt 1000 ]; then die "--mint-hosts must be 1..1000"; fi
SCENARIOS=${ONLY:-$ALL_SCENARIOS}
SCENARIOS=$(echo " $SCENARIOS " | sed "s/ tls / $TLS_SCENARIOS /")
[ "$TLS" = 0 ] || SCENARIOS="$SCENARIOS $TLS_SCENARIOS"
SCENARIOS=$(echo "$SCENARIOS" | awk '{ for (i = 1; i <= NF; i++) if (!seen[$i]++) printf "%s%s", (n++ ? " " : ""), $i }')
for s in $SCENARIOS; do [[ " $ALL_SCENARIOS $TLS_SCENARIOS " == *" $s "* ]] || die "unknown scenario: $s"; done
for t in $TARGETS_WANTED; do [[ " $ALL_TARGETS $TLS_TARGETS " == *" $t "* ]] || die "unknown target: $t"; done
is_tls() { case "$1" in tls-*) return 0 ;; *) return 1 ;; esac; }
WANT_TLS=0
for s in $SCENARIOS; do if is_tls "$s"; then WANT_TLS=1; fi; done
if [[ " $SCENARIOS " == *" tls-mint "* ]] && [ "$ROUNDS" -gt 250 ]; then die "tls-mint: at most 250 rounds"; fi
VENV="$ROOT/target/bench/venv-proxypy"
PROXYPY_BIN=${PROXYPY_BIN:-$VENV/bin/proxy}
MITM_VENV="$ROOT/target/bench/venv-mitmproxy"
MITM_VERSION=11.0.2
MITMDUMP_BIN=${MITMDUMP_BIN:-$MITM_VENV/bin/mitmdump}

secs() { # 5s -> 5, 1m -> 60, 3 -> 3
  local d=$1
  case "$d" in *m) echo $(( ${d%m} * 60 )) ;; *s) echo "${d%s}" ;; *) echo "$d" ;; esac
}

# ---------------------------------------------------------------- install
do_install() {
  [ "$(id -u)" = 0 ] || die "--install needs root (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Keep the packages' maintainer scripts from starting system-wide nginx/squid/tinyproxy.
  local prc=/usr/sbin/policy-rc.d made_prc=0
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 755 "$prc"; made_prc=1; fi
  local pkgs=(nginx libnginx-mod-stream wrk squid tinyproxy openssl curl python3 python3-venv procps util-linux)
  # (grep without -q: an early exit would fail the pipeline under pipefail.)
  if apt-cache policy hey 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then pkgs+=(hey)
  else log "hey is not packaged here: the connect, tls-ka and tls-newconn scenarios will be skipped"; fi
  apt-get install -y --no-install-recommends "${pkgs[@]}" || { [ $made_prc = 0 ] || rm -f "$prc"; die "apt-get install failed"; }
  [ $made_prc = 0 ] || rm -f "$prc"
  if [ ! -x "$VENV/bin/proxy" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'proxy.py==2.4.10'
  fi
  if [ ! -x "$MITM_VENV/bin/mitmdump" ]; then
    mkdir -p "$(dirname "$MITM_VENV")"
    python3 -m venv "$MITM_VENV"
    "$MITM_VENV/bin/pip" install --quiet "mitmproxy==$MITM_VERSION" \
      || log "pip install mitmproxy==$MITM_VERSION failed: the mitmdump TLS target will be skipped"
  fi
}
[ "$INSTALL" = 0 ] || do_install

# ---------------------------------------------------------------- prerequisites
command -v nginx >/dev/null || die "nginx not found (run with --install)"
command -v wrk >/dev/null || die "wrk not found (run with --install)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v python3 >/dev/null || die "python3 not found"
command -v openssl >/dev/null || die "openssl not found"
NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then PROXY_CORE=0; LOAD_CORE=0; RELAY_CORE=0; log "only one CPU: nothing is pinned apart"; fi
PIN_PROXY=(taskset -c "$PROXY_CORE")
PIN_LOAD=(taskset -c "$LOAD_CORE")
PIN_RELAY=(taskset -c "$RELAY_CORE")

STREAM_MODULE=""
for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
  [ -e "$m" ] && { STREAM_MODULE=$m; break; }
done
HAVE_STREAM=0
if [ -n "$STREAM_MODULE" ]; then HAVE_STREAM=1
elif nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)'; then HAVE_STREAM=1
fi

# Raise the descriptor limit for everything started from here (10k idle connections).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS="$OUT_DIR/results-$STAMP.txt"
TMP=$(mktemp -d /tmp/proxy-bench.XXXXXX)
chmod 755 "$TMP"

# ---------------------------------------------------------------- process bookkeeping
declare -A PID=()    # name -> pid (each started in its own session/process group)
declare -A PORT=()   # name -> port the client connects to

stop_proc() {
  local name=$1 pid=${PID[$1]:-}
  [ -n "$pid" ] || return 0
  unset "PID[$name]"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local n
  for n in "${!PID[@]}"; do
    case "$n" in direct|direct-tls) unset "PID[$n]" ;; *) stop_proc "$n" ;; esac   # the origin's
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start "$@" in a new session (so the whole process tree can be stopped), output to a log.
spawn() {
  local name=$1; shift
  setsid "$@" >"$TMP/$name.out" 2>&1 </dev/null &
  PID[$name]=$!
}

free_ports() { # N -> N distinct free loopback ports
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_port() { # name port -> 0 when something accepts on 127.0.0.1:port
  local name=$1 port=$2 i
  for i in $(seq 1 100); do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then return 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

tree_pids() { # pid -> pid and all descendants
  local p=$1 c
  echo "$p"
  for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done
}

mem_kib() { # field pid -> sum of field (VmRSS/VmHWM, KiB) over the process tree
  local field=$1 pid=$2 total=0 p v
  for p in $(tree_pids "$pid"); do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# ---------------------------------------------------------------- origin + relay
mint_host() { # round index -> the index-th new host name of that round (round 0: the warm-up's)
  echo "127.$(( $1 + 1 )).$(( $2 / 250 )).$(( $2 % 250 + 1 ))"
}

# An origin leaf (P-256, the key in key.pem) issued by the origin CA: sign_leaf out.pem SAN...
sign_leaf() {
  local out=$1; shift
  { printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n'
    printf 'extendedKeyUsage = serverAuth\nsubjectAltName = %s\n' "$(IFS=,; echo "$*")"; } >"$TMP/leaf.ext"
  openssl x509 -req -in "$TMP/origin.csr" -CA "$TMP/origin-ca.pem" -CAkey "$TMP/origin-ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$TMP/leaf.ext" -out "$out" >/dev/null 2>&1
}

setup_files() {
  mkdir -p "$TMP/www" "$TMP/nginx-tmp"
  head -c 1048576 /dev/urandom >"$TMP/www/1m"
  # The origin's certificate is issued by an "origin CA" that the TLS scenarios' proxies
  # verify it with (hey, in the connect scenario, does not verify).
  if ! { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=proxy benchmark origin CA" -keyout "$TMP/origin-ca-key.pem" -out "$TMP/origin-ca.pem" \
         && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
              -keyout "$TMP/key.pem" -out "$TMP/origin.csr" \
         && sign_leaf "$TMP/cert.pem" DNS:localhost IP:127.0.0.1; } >/dev/null 2>&1; then
    die "openssl could not make the origin's certificates"
  fi
  [ "$WANT_TLS" = 0 ] || setup_tls_files
  chmod -R a+rX "$TMP"
}

# CAs for the intercepting targets and the client's trust bundle (origin CA + every proxy CA).
PROXY_TLS=0
setup_tls_files() {
  local sans=() r i
  if [ -x "$PROXY_BIN" ] && "$PROXY_BIN" --help 2>&1 | grep -- '--ca-generate' >/dev/null; then
    if "$PROXY_BIN" --ca-generate "$TMP/ca-proxy" >"$TMP/ca-generate.out" 2>&1 \
       && [ -s "$TMP/ca-proxy/ca-cert.pem" ]; then
      PROXY_TLS=1
    else
      cat "$TMP/ca-generate.out" >&2; log "proxy --ca-generate failed: the proxy TLS targets will be skipped"
    fi
  else
    log "$PROXY_BIN --help lists no --ca-generate (TLS interception not built in): the proxy and proxy-log TLS targets will be skipped"
  fi
  # proxy.py mints with the openssl binary and wants RSA; mitmproxy's leaves use its CA's key,
  # and its own default CA is RSA 2048 as well. One RSA CA for both.
  mkdir -p "$TMP/mitm"
  if ! { openssl genrsa -out "$TMP/rsa-ca-key.pem" 2048 \
         && openssl req -x509 -new -key "$TMP/rsa-ca-key.pem" -days 2 -subj "/CN=proxy benchmark RSA CA" \
              -out "$TMP/rsa-ca.pem" \
         && openssl genrsa -out "$TMP/rsa-signing-key.pem" 2048; } >/dev/null 2>&1; then
    die "openssl could not make the RSA CA"
  fi
  cat "$TMP/rsa-ca-key.pem" "$TMP/rsa-ca.pem" >"$TMP/mitm/mitmproxy-ca.pem"
  cat "$TMP/origin-ca.pem" "$TMP/rsa-ca.pem" >"$TMP/client-bundle.pem"
  [ "$PROXY_TLS" = 0 ] || cat "$TMP/ca-proxy/ca-cert.pem" >>"$TMP/client-bundle.pem"
  if [[ " $SCENARIOS " == *" tls-mint "* ]]; then
    # One certificate naming every mint host (of the warm-up and of each round).
    for r in $(seq 0 "$ROUNDS"); do
      for i in $(seq 0 $(( MINT_HOSTS - 1 ))); do sans+=("IP:$(mint_host "$r" "$i")"); done
    done
    sign_leaf "$TMP/mint-cert.pem" DNS:localhost IP:127.0.0.1 "${sans[@]}" \
      || die "openssl could not make the mint origin's certificate"
  fi
}

start_origin() { # [scenario]
  local scen=${1:-} r i
  read -r OP OTP MP < <(free_ports 3)
  # hey sends its URL's "host:port" as the TLS server name (SNI) when the URL has a port:
  # not a host name (RFC 6066), and rustls refuses such a ClientHello, so an intercepting
  # proxy built on it can only relay hey's tunnels opaquely. With the origin also on port
  # 443, hey's URL has no port: for an IP host it then sends no SNI at all.
  HEY_443=""
  if [ "$(id -u)" = 0 ] && ! ss -ltn 2>/dev/null | grep -q '127.0.0.1:443 \|\*:443 \|0.0.0.0:443 '; then
    HEY_443=1
  fi
  cat >"$TMP/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/origin.pid;
error_log $TMP/origin-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 30000; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $TMP/nginx-tmp/body;
  proxy_temp_path $TMP/nginx-tmp/proxy;
  fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
  scgi_temp_path $TMP/nginx-tmp/scgi;
  server {
    listen 127.0.0.1:$OP backlog=4096;
    listen 127.0.0.1:$OTP ssl backlog=4096;
$( [ -n "$HEY_443" ] && echo "    listen 127.0.0.1:443 ssl backlog=4096;" )
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    location = /small { default_type text/plain; return 200 "hello from the origin\\n"; }
    location = /1m { root $TMP/www; default_type application/octet-stream; }
    location = /nginx-status { stub_status; }
  }
EOF
  if [ "$scen" = tls-mint ]; then
    echo "  server {"
    for r in $(seq 0 "$ROUNDS"); do
      for i in $(seq 0 $(( MINT_HOSTS - 1 ))); do echo "    listen $(mint_host "$r" "$i"):$MP ssl;"; done
    done
    cat <<EOF
    ssl_certificate $TMP/mint-cert.pem;
    ssl_certificate_key $TMP/key.pem;
    location = /small { default_type text/plain; return 200 "hello from the origin\\n"; }
  }
EOF
  fi >>"$TMP/origin.conf"
  echo "}" >>"$TMP/origin.conf"
  spawn origin "${PIN_LOAD[@]}" nginx -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf"
  wait_port origin "$OP" || { cat "$TMP/origin.out" "$TMP/origin-error.log" >&2 2>/dev/null; die "nginx origin did not start"; }
  PORT[direct]=$OP; PORT[direct-tls]=$OTP; PORT[mint]=$MP
  PID[direct]=${PID[origin]}   # for RSS readings only; stopped as 'origin'
  PID[direct-tls]=${PID[origin]}
}

start_relay() {
  [ "$HAVE_STREAM" = 1 ] || return 1
  local RP RTP
  read -r RP RTP < <(free_ports 2)
  {
    [ -z "$STREAM_MODULE" ] || echo "load_module $STREAM_MODULE;"
    cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/relay.pid;
error_log $TMP/relay-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 30000; }
stream {
  proxy_buffer_size 256k;   # default 16k makes the relay slower than a proxy on 1 MiB bodies
  server { listen 127.0.0.1:$RP backlog=4096; proxy_pass 127.0.0.1:${PORT[direct]}; }
  server { listen 127.0.0.1:$RTP backlog=4096; proxy_pass 127.0.0.1:${PORT[direct-tls]}; }
}
EOF
  } >"$TMP/relay.conf"
  spawn relay "${PIN_RELAY[@]}" nginx -p "$TMP" -e "$TMP/relay-error.log" -c "$TMP/relay.conf"
  wait_port relay "$RP" || { stop_proc relay; return 1; }
  PORT[relay]=$RP; PORT[relay-tls]=$RTP
}

# ---------------------------------------------------------------- proxies under test
wait_port_file() { # name -> 0 once the proxy wrote its --port-file and accepts there (PORT[name] set)
  local t=$1 i p
  for i in $(seq 1 100); do
    [ -s "$TMP/$t.port" ] && break
    kill -0 "${PID[$t]}" 2>/dev/null || break
    sleep 0.1
  done
  p=$( { tr -dc 0-9 <"$TMP/$t.port"; } 2>/dev/null || true)
  if [ -z "$p" ] || ! wait_port "$t" "$p"; then stop_proc "$t"; return 1; fi
  PORT[$t]=$p
}

skip_note() { echo "skipped $*" >>"$TMP/skipped"; log "skipped $*"; }

declare -A CURL_K=()   # TLS target -> 1 when curl has to use -k with it (its leaves do not verify)

# start_tls_target scenario name -> 0 if started and intercepting (or tunnelling) as expected
start_tls_target() {
  local scen=$1 t=$2 p
  local ca=(--ca-key-file "$TMP/ca-proxy/ca-key.pem" --ca-cert-file "$TMP/ca-proxy/ca-cert.pem"
            --ca-signing-key-file "$TMP/ca-proxy/signing-key.pem" --ca-cert-dir "$TMP/certs-$t"
            --ca-file "$TMP/origin-ca.pem")
  case "$t" in
    direct-tls) return 0 ;;
    tunnel|proxy|proxy-log)
      [ -x "$PROXY_BIN" ] || { skip_note "$t ($scen): no $PROXY_BIN"; return 1; }
      if [ "$t" != tunnel ] && [ "$PROXY_TLS" = 0 ]; then
        skip_note "$t ($scen): $PROXY_BIN has no --ca-generate, TLS interception not built in"; return 1
      fi
      rm -rf "$TMP/$t.port" "$TMP/certs-$t"; mkdir -p "$TMP/certs-$t"
      case "$t" in
        tunnel) spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
                  --num-workers 1 --log-file /dev/null --log-level e ;;
        proxy) spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
                 --num-workers 1 --log-file /dev/null --log-level e "${ca[@]}" ;;
        proxy-log) spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
                     --num-workers 1 --log-file "$TMP/proxy-log.log" "${ca[@]}" ;;
      esac
      wait_port_file "$t" || { skip_note "$t ($scen): did not start (see $TMP/$t.out with --keep-tmp)"; return 1; } ;;
    proxy.py)
      [ -x "$PROXYPY_BIN" ] || { skip_note "$t ($scen): not installed (--install)"; return 1; }
      p=$(free_ports 1)
      rm -rf "$TMP/certs-$t"; mkdir -p "$TMP/certs-$t"
      spawn "$t" "${PIN_PROXY[@]}" "$PROXYPY_BIN" --hostname 127.0.0.1 --port "$p" \
        --num-acceptors 1 --num-workers 1 --log-file /dev/null --log-level e \
        --ca-key-file "$TMP/rsa-ca-key.pem" --ca-cert-file "$TMP/rsa-ca.pem" \
        --ca-signing-key-file "$TMP/rsa-signing-key.pem" --ca-cert-dir "$TMP/certs-$t" \
        --ca-file "$TMP/origin-ca.pem"
      wait_port "$t" "$p" || { stop_proc "$t"; skip_note "$t ($scen): did not start"; return 1; }
      PORT[$t]=$p ;;
    mitmdump)
      [ -x "$MITMDUMP_BIN" ] || { skip_note "$t ($scen): not installed (--install)"; return 1; }
      p=$(free_ports 1)
      local extra=()
      # The mint origin's certificate names every mint host: leaves copying it would be huge.
      [ "$scen" = tls-mint ] && extra=(--set upstream_cert=false)
      spawn "$t" "${PIN_PROXY[@]}" "$MITMDUMP_BIN" --listen-host 127.0.0.1 -p "$p" -q \
        --set confdir="$TMP/mitm" --set flow_detail=0 --set termlog_verbosity=error \
        --set ssl_verify_upstream_trusted_ca="$TMP/origin-ca.pem" "${extra[@]}"
      local i
      for i in 1 2 3; do wait_port "$t" "$p" && break; done   # a Python start: allow 30 s
      if ! wait_port "$t" "$p"; then stop_proc "$t"; skip_note "$t ($scen): did not start"; return 1; fi
      PORT[$t]=$p ;;
    *) return 1 ;;
  esac
  tls_probe "$scen" "$t"
}

# One request through the target, checked: the body, and who issued the leaf the client got.
tls_probe() { # scenario target
  local scen=$1 t=$2 body issuer rc=0 via=()
  [ "$t" = direct-tls ] || via=(--proxy "http://127.0.0.1:${PORT[$t]}")
  [ "$t" = direct-tls ] && via=(--noproxy '*')
  CURL_K[$t]=0
  body=$(curl -sS --http1.1 --max-time 10 --cacert "$TMP/client-bundle.pem" "${via[@]}" \
           "https://127.0.0.1:${PORT[direct-tls]}/small" 2>"$TMP/probe.err") || rc=$?
  if [ "$rc" = 60 ]; then
    rc=0
    body=$(curl -sS -k --http1.1 --max-time 10 "${via[@]}" "https://127.0.0.1:${PORT[direct-tls]}/small" 2>"$TMP/probe.err") || rc=$?
    [ "$rc" != 0 ] || { CURL_K[$t]=1; echo "note: $t: its leaf for 127.0.0.1 does not verify (curl -k used in tls-mint)" >>"$TMP/skipped"; }
  fi
  if [ "$rc" != 0 ] || [ "$body" != "hello from the origin" ]; then
    skip_note "$t ($scen): a request through it failed (curl exit $rc: $(head -c 200 "$TMP/probe.err"))"
    [ "$t" = direct-tls ] || stop_proc "$t"
    return 1
  fi
  if [ "$t" != direct-tls ]; then
    issuer=$(openssl s_client -proxy "127.0.0.1:${PORT[$t]}" -connect "127.0.0.1:${PORT[direct-tls]}" </dev/null 2>/dev/null \
               | openssl x509 -noout -issuer 2>/dev/null || true)
    echo "note: $t: leaf for 127.0.0.1 ${issuer:-issuer: unknown}" >>"$TMP/skipped"
    if [ "$t" != tunnel ] && [[ "$issuer" == *"origin CA"* ]]; then
      skip_note "$t ($scen): the origin's own certificate came through: not intercepting"; stop_proc "$t"; return 1
    fi
  fi
}
start_target() { # name -> 0 if started (PORT[name] set)
  local t=$1 p
  case "$t" in
    direct) return 0 ;;
    relay) start_relay ;;
    proxy|proxy-log|proxy-base|proxy-2w|proxy-plugins|proxy-lua|proxy-burro)
      [ -x "$PROXY_BIN" ] || return 1
      if [ "$t" = proxy-base ] && { [ -z "$BASE_BIN" ] || [ ! -x "$BASE_BIN" ]; }; then return 1; fi
      rm -f "$TMP/$t.port"
      if [ "$t" = proxy-base ]; then
        spawn "$t" "${PIN_PROXY[@]}" "$BASE_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}"
      elif [ "$t" = proxy ]; then
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}"
      elif [ "$t" = proxy-log ]; then
        # The default log level: an access-log line per request, written to a real file.
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file "$TMP/proxy-log.log" "${HOLD_ARGS[@]}"
      elif [ "$t" = proxy-lua ]; then
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}" \
          --plugins "$ROOT/plugin_examples/lua/add_header.lua"
      elif [ "$t" = proxy-burro ]; then
        mkdir -p "$TMP/burro-count"
        cat > "$TMP/burro-count/after_response.lua" <<'LUA'
local n = tonumber((kv.get("requests"))) or 0
kv.set("requests", n + 1)
LUA
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}" \
          --plugins "$TMP/burro-count/"
      elif [ "$t" = proxy-plugins ]; then
        # The cost of the chain: basic auth plus a host filter on every request.
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}" \
          --basic-auth "$BENCH_USER:$BENCH_PASS" --plugins FilterByUpstreamHostPlugin
      else
        spawn "$t" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 2 --log-file /dev/null --log-level e "${HOLD_ARGS[@]}"
      fi
      wait_port_file "$t" ;;
    proxy.py)
      [ -x "$PROXYPY_BIN" ] || return 1
      p=$(free_ports 1)
      spawn "$t" "${PIN_PROXY[@]}" "$PROXYPY_BIN" --hostname 127.0.0.1 --port "$p" \
        --num-acceptors 1 --num-workers 1 --log-file /dev/null --log-level e "${HOLD_ARGS_PROXYPY[@]}"
      wait_port "$t" "$p" || { stop_proc "$t"; return 1; }
      PORT[$t]=$p ;;
    tinyproxy)
      command -v tinyproxy >/dev/null || return 1
      p=$(free_ports 1)
      cat >"$TMP/tinyproxy.conf" <<EOF
Port $p
Listen 127.0.0.1
Timeout 600
MaxClients 2000
LogLevel Critical
LogFile "$TMP/tinyproxy.log"
PidFile "$TMP/tinyproxy.pid"
DisableViaHeader Yes
EOF
      spawn "$t" "${PIN_PROXY[@]}" tinyproxy -d -c "$TMP/tinyproxy.conf"
      wait_port "$t" "$p" || { stop_proc "$t"; return 1; }
      PORT[$t]=$p ;;
    squid)
      local sq
      sq=$(command -v squid || echo /usr/sbin/squid)
      [ -x "$sq" ] || return 1
      p=$(free_ports 1)
      mkdir -p "$TMP/squid"; chmod 777 "$TMP/squid"
      cat >"$TMP/squid.conf" <<EOF
http_port 127.0.0.1:$p
http_access allow localhost
http_access deny all
cache deny all
cache_mem 0 MB
workers 1
pid_filename $TMP/squid/squid.pid
cache_log $TMP/squid/cache.log
access_log none
cache_store_log none
coredump_dir $TMP/squid
max_filedescriptors 65536
visible_hostname bench.invalid
shutdown_lifetime 0 seconds
via off
forwarded_for delete
EOF
      spawn "$t" "${PIN_PROXY[@]}" "$sq" -N -f "$TMP/squid.conf"
      wait_port "$t" "$p" || { stop_proc "$t"; return 1; }
      PORT[$t]=$p ;;
    *) return 1 ;;
  esac
}

is_proxy() { case "$1" in direct|relay|direct-tls) return 1 ;; *) return 0 ;; esac; }

# ---------------------------------------------------------------- load generators
write_wrk_script() { # file path connection_close(0/1) [proxy_auth(0/1) [pace]]
  local f=$1 path=$2 close=$3 auth=${4:-0} pace=${5:-}
  {
    echo "wrk.method = \"GET\""
    echo "wrk.path = \"$path\""
    echo "wrk.headers[\"Host\"] = \"127.0.0.1:${PORT[direct]}\""
    [ "$close" = 0 ] || echo "wrk.headers[\"Connection\"] = \"close\""
    [ "$auth" = 0 ] || echo "wrk.headers[\"Proxy-Authorization\"] = \"Basic $(printf '%s:%s' "$BENCH_USER" "$BENCH_PASS" | base64)\""
    # wrk calls delay() before each request: milliseconds to wait first.
    [ -z "$pace" ] || echo "function delay() if math.random() < $pace then return 1 end return 0 end"
    cat <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  -- errors.read also counts a peer closing a keep-alive connection after a
  -- complete response (tinyproxy does after every one): reported apart as "closed".
  io.write(string.format("RESULT %d %d %d %d %d %.3f\n", summary.requests, summary.bytes,
    summary.duration, e.connect + e.write + e.status + e.timeout, e.read,
    latency:percentile(99) / 1000))
end
EOF
  } >"$f"
}

# run_load scenario target duration -> "reqps mibps p99ms errors closed"
run_load() {
  local scen=$1 t=$2 dur=$3 port=${PORT[$2]} path url close=0 out limit
  limit=$(( $(secs "$dur") + 30 ))
  case "$scen" in
    ka|ka-paced|newconn|1m)
      local auth=0 pace=""
      path=/small; [ "$scen" = 1m ] && path=/1m
      [ "$scen" = newconn ] && close=1
      [ "$scen" = ka-paced ] && pace=$PACE
      [ "$t" = proxy-plugins ] && auth=1
      url="http://127.0.0.1:${PORT[direct]}$path"
      # Proxies get absolute-form request lines; direct and relay get origin-form.
      if is_proxy "$t"; then write_wrk_script "$TMP/wrk.lua" "$url" "$close" "$auth" "$pace"
      else write_wrk_script "$TMP/wrk.lua" "$path" "$close" 0 "$pace"; fi
      out=$(timeout "$limit" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"$dur" --timeout 5s \
              -s "$TMP/wrk.lua" "http://127.0.0.1:$port/" 2>&1 || true)
      echo "$out" >>"$TMP/load.log"
      echo "$out" | awk '/^RESULT/ {
          d = $4 / 1e6; if (d <= 0) d = 1
          printf "%.1f %.2f %.3f %d %d\n", $2 / d, $3 / d / 1048576, $7, $5, $6; found = 1 }
        END { if (!found) print "0 0 0 -1 0" }' ;;
    connect)
      if is_proxy "$t"; then
        local creds=""; [ "$t" = proxy-plugins ] && creds="$BENCH_USER:$BENCH_PASS@"
        out=$(timeout "$limit" "${PIN_LOAD[@]}" hey -z "$dur" -c "$CONNS" -x "http://${creds}127.0.0.1:$port" \
                "https://127.0.0.1:${PORT[direct-tls]}/small" 2>&1 || true)
      else
        local tp=${PORT[direct-tls]}; [ "$t" = relay ] && tp=${PORT[relay-tls]}
        out=$(timeout "$limit" "${PIN_LOAD[@]}" hey -z "$dur" -c "$CONNS" "https://127.0.0.1:$tp/small" 2>&1 || true)
      fi
      echo "$out" >>"$TMP/load.log"
      echo "$out" | parse_hey | cut -d' ' -f1-5 ;;
  esac
}

# hey's output -> "req/s MiB/s p99ms errors 0 responses"
# errors = non-200 responses + transport errors, minus requests cut off by -z's end.
parse_hey() {
  awk '
    /Requests\/sec:/ { rps = $2 }
    /Total data:/ { bytes = $3 }
    /Total:/ && /secs/ { total = $2 }
    /99%% in|99% in/ { p99 = $3 * 1000 }
    /Status code distribution:/ { sec = "s"; next }
    /Error distribution:/ { sec = "e"; next }
    sec == "s" && /^ *\[[0-9]+\]/ { code = $1; gsub(/[^0-9]/, "", code); resp += $2; if (code != 200) err += $2 }
    sec == "e" && /^ *\[[0-9]+\]/ { if ($0 !~ /canceled|Client.Timeout exceeded while awaiting headers/) { n = $1; gsub(/[^0-9]/, "", n); err += n } }
    END { if (rps == "") print "0 0 0 -1 0 0"; else printf "%.1f %.2f %.3f %d 0 %d\n", rps, (total > 0 ? bytes / total / 1048576 : 0), p99, err, resp }'
}

# ---------------------------------------------------------------- TLS load
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

cpu_ticks() { # pid -> user+system CPU ticks of the process tree, reaped children included
  local total=0 p v
  for p in $(tree_pids "$1"); do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 + $14 + $15 }' || true)
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

origin_accepts() { # -> nginx's accepted-connection count (stub_status; this request's own included)
  curl -s --noproxy '*' --max-time 5 "http://127.0.0.1:${PORT[direct]}/nginx-status" | awk 'NR == 3 { print $1 }'
}

# The URL hey fetches over TLS (see HEY_443).
hey_tls_url() {
  if [ -n "$HEY_443" ]; then echo "https://127.0.0.1/small"; else echo "https://127.0.0.1:${PORT[direct-tls]}/small"; fi
}

target_pid() { if [ "$1" = direct-tls ]; then echo "${PID[origin]}"; else echo "${PID[$1]}"; fi; }

# run_tls_load scenario target duration
#   -> "req/s MiB/s p99ms errors 0 responses target-cpu-ms origin-cpu-ms origin-accepts"
run_tls_load() {
  local scen=$1 t=$2 dur=$3 out limit res tc0 tc1 oc0 oc1 a0 a1 ka=() via=()
  limit=$(( $(secs "$dur") + 30 ))
  [ "$scen" = tls-newconn ] && ka=(-disable-keepalive)
  [ "$t" = direct-tls ] || via=(-x "http://127.0.0.1:${PORT[$t]}")
  a0=$(origin_accepts); tc0=$(cpu_ticks "$(target_pid "$t")"); oc0=$(cpu_ticks "${PID[origin]}")
  out=$(SSL_CERT_FILE="$TMP/client-bundle.pem" timeout "$limit" "${PIN_LOAD[@]}" hey -z "$dur" -c "$CONNS" \
          "${ka[@]}" "${via[@]}" "$(hey_tls_url)" 2>&1 || true)
  tc1=$(cpu_ticks "$(target_pid "$t")"); oc1=$(cpu_ticks "${PID[origin]}"); a1=$(origin_accepts)
  echo "$out" >>"$TMP/load.log"
  res=$(echo "$out" | parse_hey)
  echo "$res $(( (tc1 - tc0) * 1000 / CLK_TCK )) $(( (oc1 - oc0) * 1000 / CLK_TCK )) $(( ${a1:-0} - ${a0:-0} - 1 ))"
}

# run_mint target round count -> "median-ms 0 p99ms errors 0 hosts target-cpu-ms origin-cpu-ms origin-accepts"
# One curl for all the round's hosts: each a new host, so a new connection (and tunnel) each.
run_mint() {
  local t=$1 r=$2 n=$3 i tc0 tc1 oc0 oc1 a0 a1 opts=()
  for i in $(seq 0 $(( n - 1 ))); do
    printf 'url = "https://%s:%s/small"\noutput = "/dev/null"\n' "$(mint_host "$r" "$i")" "${PORT[mint]}"
  done >"$TMP/mint.curl"
  if [ "$t" = direct-tls ]; then opts=(--noproxy '*'); else opts=(--proxy "http://127.0.0.1:${PORT[$t]}"); fi
  if [ "${CURL_K[$t]:-0}" = 1 ]; then opts+=(-k); else opts+=(--cacert "$TMP/client-bundle.pem"); fi
  a0=$(origin_accepts); tc0=$(cpu_ticks "$(target_pid "$t")"); oc0=$(cpu_ticks "${PID[origin]}")
  timeout $(( n + 30 )) "${PIN_LOAD[@]}" curl -s --http1.1 --max-time 10 "${opts[@]}" \
    -w '%{http_code} %{time_total}\n' -K "$TMP/mint.curl" >"$TMP/mint.out" 2>>"$TMP/load.log" || true
  tc1=$(cpu_ticks "$(target_pid "$t")"); oc1=$(cpu_ticks "${PID[origin]}"); a1=$(origin_accepts)
  awk -v n="$n" -v tc="$(( (tc1 - tc0) * 1000 / CLK_TCK ))" -v oc="$(( (oc1 - oc0) * 1000 / CLK_TCK ))" \
      -v acc="$(( ${a1:-0} - ${a0:-0} - 1 ))" '
    $1 == 200 { v[++k] = $2 * 1000 } $1 != 200 { err++ }
    END {
      err += n - NR   # transfers that printed nothing
      if (k == 0) { printf "0 0 0 %d 0 %d %d %d %d\n", err, n, tc, oc, acc; exit }
      # insertion sort: k is at most --mint-hosts
      for (i = 2; i <= k; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
      med = (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
      p = int(0.99 * k + 0.999999); if (p < 1) p = 1
      printf "%.3f 0 %.3f %d 0 %d %d %d %d\n", med, v[p], err, n, tc, oc, acc }' "$TMP/mint.out"
}

# ---------------------------------------------------------------- reporting
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

report_scenario() { # scenario
  local scen=$1 col=5 unit="req/s" t med p99 err closed hwm dmed rmed rp99
  [ "$scen" = 1m ] && { col=6; unit="MiB/s"; }
  dmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "direct" { print $c }' "$RESULTS" | median)
  rmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "relay" { print $c }' "$RESULTS" | median)
  rp99=$(awk -v s="$scen" '$1 == "run" && $2 == s && $3 == "relay" { print $7 }' "$RESULTS" | median)
  echo
  echo "== $scen: median of $ROUNDS round(s) x $DURATION, c=$CONNS$([ "$scen" = ka-paced ] && echo ", 1 ms wait before $PACE of the requests")"
  printf "%-10s %12s %9s %7s %8s %12s %8s %8s %9s\n" target "$unit" "p99 ms" errors closed "peakRSS MiB" "/direct" "/relay" "p99/relay"
  echo "   (errors: failed requests; closed: the server closed a keep-alive client connection after a response)"
  for t in $ACTIVE; do
    med=$(awk -v s="$scen" -v t="$t" -v c="$col" '$1 == "run" && $2 == s && $3 == t { print $c }' "$RESULTS" | median)
    [ "$med" = nan ] && continue
    p99=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { print $7 }' "$RESULTS" | median)
    err=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $8 } END { print e + 0 }' "$RESULTS")
    closed=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $9 } END { print e + 0 }' "$RESULTS")
    hwm=$(awk -v s="$scen" -v t="$t" '$1 == "peak" && $2 == s && $3 == t { print $4 }' "$RESULTS" | tail -n1)
    awk -v t="$t" -v m="$med" -v p="$p99" -v e="$err" -v c="$closed" -v h="${hwm:-0}" -v d="$dmed" -v r="$rmed" -v rp="$rp99" 'BEGIN {
      printf "%-10s %12.1f %9.2f %7d %8d %12.1f %8s %8s %9s\n", t, m, p, e, c, h / 1024,
        (d != "nan" && d > 0 ? sprintf("%.2f", m / d) : "-"), (r != "nan" && r > 0 ? sprintf("%.2f", m / r) : "-"),
        (rp != "nan" && rp > 0 ? sprintf("%.2f", p / rp) : "-") }'
  done
  # The access log's cost, when both were run.
  local pmed lmed
  pmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "proxy" { print $c }' "$RESULTS" | median)
  lmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "proxy-log" { print $c }' "$RESULTS" | median)
  if [ "$pmed" != nan ] && [ "$lmed" != nan ]; then
    awk -v p="$pmed" -v l="$lmed" 'BEGIN { if (p > 0) printf "proxy-log/proxy %.3f (medians)\n", l / p }'
  fi
}

report_rss() {
  echo
  echo "== rss: idle RSS after start, and with $IDLE_CONNS idle client connections (mode $RSS_MODE)"
  printf "%-10s %11s %13s %9s %8s %8s\n" target "idle MiB" "w/conns MiB" "KiB/conn" opened alive
  awk '$1 == "rss" { printf "%-10s %11.1f %13.1f %9.1f %8d %8d\n", $2, $3 / 1024, $4 / 1024, ($5 > 0 ? ($4 - $3) / $5 : 0), $5, $6 }' "$RESULTS"
}

med_of() { # scenario target awk-expression over its run lines -> the median over the rounds
  awk -v s="$1" -v t="$2" '$1 == "run" && $2 == s && $3 == t { print '"$3"' }' "$RESULTS" | median
}

# shellcheck disable=SC2016   # awk expressions, for awk
report_tls() { # scenario: tls-ka / tls-newconn
  local scen=$1 t med dmed dacc
  dmed=$(med_of "$scen" direct-tls '$5')
  # nginx's CPU per TLS connection it terminates itself: the yardstick for a proxy's.
  dacc=$(med_of "$scen" direct-tls '($13 > 0 ? $12 * 1000 / $13 : "nan")')
  echo
  echo "== $scen: median of $ROUNDS round(s) x $DURATION, c=$CONNS (hey$([ "$scen" = tls-newconn ] && echo ' -disable-keepalive'))"
  printf "%-10s %10s %8s %7s %9s %8s %10s %10s %10s %8s\n" target "req/s" "p99 ms" errors "peak MiB" "/direct" \
    "cpu us/req" "orig us/rq" "orig us/ac" "cpu/acc"
  echo "   (cpu: the target's user+system CPU (direct-tls: nginx's) per request, a new connection each in"
  echo "    tls-newconn; orig: the origin nginx's, per request and per TLS accept; cpu/acc: cpu us/req over"
  echo "    direct-tls's orig us/ac, i.e. per connection against nginx terminating TLS itself; goal <= 1.5)"
  for t in $ACTIVE; do
    med=$(med_of "$scen" "$t" '$5')
    [ "$med" = nan ] && continue
    awk -v t="$t" -v m="$med" -v p="$(med_of "$scen" "$t" '$7')" \
        -v e="$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $8 } END { print e + 0 }' "$RESULTS")" \
        -v h="$(awk -v s="$scen" -v t="$t" '$1 == "peak" && $2 == s && $3 == t { print $4 }' "$RESULTS" | tail -n1)" \
        -v d="$dmed" -v c="$(med_of "$scen" "$t" '($10 > 0 ? $11 * 1000 / $10 : "nan")')" \
        -v o="$(med_of "$scen" "$t" '($10 > 0 ? $12 * 1000 / $10 : "nan")')" \
        -v a="$(med_of "$scen" "$t" '($13 > 0 ? $12 * 1000 / $13 : "nan")')" -v da="$dacc" -v nc="$scen" 'BEGIN {
      f = "%10s"
      printf "%-10s %10.1f %8.2f %7d %9.1f %8s %10s %10s %10s %8s\n", t, m, p, e, h / 1024,
        (d != "nan" && d > 0 ? sprintf("%.2f", m / d) : "-"),
        (c != "nan" ? sprintf("%.1f", c) : "-"), (o != "nan" ? sprintf("%.1f", o) : "-"),
        (a != "nan" && nc == "tls-newconn" ? sprintf("%.1f", a) : "-"),
        (c != "nan" && da != "nan" && da > 0 && nc == "tls-newconn" ? sprintf("%.2f", c / da) : "-") }'
  done
  local pmed lmed
  pmed=$(med_of "$scen" proxy '$5'); lmed=$(med_of "$scen" proxy-log '$5')
  if [ "$pmed" != nan ] && [ "$lmed" != nan ]; then
    awk -v p="$pmed" -v l="$lmed" 'BEGIN { if (p > 0) printf "proxy-log/proxy %.3f (medians)\n", l / p }'
  fi
}

# shellcheck disable=SC2016   # awk expressions, for awk
report_mint() {
  local scen=tls-mint t med dmed
  dmed=$(med_of "$scen" direct-tls '$5')
  echo
  echo "== tls-mint: $MINT_HOSTS new hosts per round, one request each over a new connection (curl), median of $ROUNDS round(s)"
  printf "%-10s %10s %8s %7s %8s %11s %11s %5s\n" target "median ms" "p99 ms" errors "/direct" "cpu ms/host" "orig ms/hst" "curl"
  echo "   (ms: curl's time_total; /direct: median latency over direct-tls's (higher is slower); cpu: the"
  echo "    target's user+system CPU per new host (direct-tls: nginx's), orig: the origin nginx's; curl -k"
  echo "    where the target's leaves did not verify)"
  for t in $ACTIVE; do
    med=$(med_of "$scen" "$t" '$5')
    [ "$med" = nan ] && continue
    awk -v t="$t" -v m="$med" -v p="$(med_of "$scen" "$t" '$7')" \
        -v e="$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $8 } END { print e + 0 }' "$RESULTS")" \
        -v d="$dmed" -v c="$(med_of "$scen" "$t" '($10 > 0 ? $11 / $10 : "nan")')" \
        -v o="$(med_of "$scen" "$t" '($10 > 0 ? $12 / $10 : "nan")')" -v k="$([ "${CURL_K[$t]:-0}" = 1 ] && echo -k || echo ok)" 'BEGIN {
      printf "%-10s %10.2f %8.2f %7d %8s %11s %11s %5s\n", t, m, p, e,
        (d != "nan" && d > 0 ? sprintf("%.2f", m / d) : "-"),
        (c != "nan" ? sprintf("%.2f", c) : "-"), (o != "nan" ? sprintf("%.2f", o) : "-"), k }'
  done
}

# ---------------------------------------------------------------- scenarios
start_scenario_targets() { # [scenario] -> sets ACTIVE (targets that started), in order
  local scen=${1:-} t list=$ALL_TARGETS
  is_tls "$scen" && list=$TLS_TARGETS
  start_origin "$scen"
  ACTIVE=""
  for t in ${TARGETS_WANTED:-$list}; do
    [[ " $list " == *" $t "* ]] || continue   # a target of the other kind of scenario
    if is_tls "$scen"; then
      if start_tls_target "$scen" "$t"; then ACTIVE="$ACTIVE $t"; fi
    elif start_target "$t"; then ACTIVE="$ACTIVE $t"
    else echo "skipped $t: not available or did not start" >>"$TMP/skipped"; fi
  done
  ACTIVE=${ACTIVE# }
}

run_tls_scenario() { # scenario
  local scen=$1 r i n t res
  local -a order
  case "$scen" in
    tls-mint) command -v curl >/dev/null || { log "$scen: curl not installed, skipped"; return 0; } ;;
    *) command -v hey >/dev/null || { log "$scen: hey not installed (--install), skipped"; return 0; } ;;
  esac
  start_scenario_targets "$scen"
  log "$scen: targets: $ACTIVE"
  read -r -a order <<<"$ACTIVE"
  n=${#order[@]}
  for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $(( n - 1 ))); do
      t=${order[$(( (i + r - 1) % n ))]}   # rotate the start each round
      if [ "$t" = proxy-log ]; then : >"$TMP/proxy-log.log"; fi
      if [ "$scen" = tls-mint ]; then
        # Warm-up: a few hosts of their own (round 0's), so that no round's host is ever seen twice.
        if [ "$r" = 1 ] && [ "$(secs "$WARMUP")" != 0 ]; then
          run_mint "$t" 0 $(( MINT_HOSTS < 10 ? MINT_HOSTS : 10 )) >/dev/null
        fi
        res=$(run_mint "$t" "$r" "$MINT_HOSTS")
        log "$scen round $r $t: $res  (median-ms 0 p99ms errors 0 hosts cpu-ms origin-cpu-ms origin-accepts)"
      else
        if [ "$r" = 1 ] && [ "$(secs "$WARMUP")" != 0 ]; then run_tls_load "$scen" "$t" "$WARMUP" >/dev/null; fi
        res=$(run_tls_load "$scen" "$t" "$DURATION")
        log "$scen round $r $t: $res  (req/s MiB/s p99ms errors 0 responses cpu-ms origin-cpu-ms origin-accepts)"
      fi
      echo "run $scen $t $r $res" >>"$RESULTS"
    done
  done
  for t in $ACTIVE; do
    echo "peak $scen $t $(mem_kib VmHWM "$(target_pid "$t")")" >>"$RESULTS"
  done
  stop_all
  if [ "$scen" = tls-mint ]; then report_mint; else report_tls "$scen"; fi | tee -a "$RESULTS.tables"
}

run_throughput_scenario() { # scenario
  local scen=$1 r i n t res
  local -a order
  if [ "$scen" = connect ] && ! command -v hey >/dev/null; then
    log "connect: hey not installed, skipped"; return 0
  fi
  start_scenario_targets
  log "$scen: targets: $ACTIVE"
  read -r -a order <<<"$ACTIVE"
  n=${#order[@]}
  for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $(( n - 1 ))); do
      t=${order[$(( (i + r - 1) % n ))]}   # rotate the start each round
      if [ "$r" = 1 ] && [ "$(secs "$WARMUP")" != 0 ]; then run_load "$scen" "$t" "$WARMUP" >/dev/null; fi
      # Keep the access log from filling the disk (the proxy appends: truncating is safe).
      if [ "$t" = proxy-log ]; then : >"$TMP/proxy-log.log"; fi
      res=$(run_load "$scen" "$t" "$DURATION")
      echo "run $scen $t $r $res" >>"$RESULTS"
      log "$scen round $r $t: $res  (req/s MiB/s p99ms errors closed)"
    done
  done
  for t in $ACTIVE; do
    echo "peak $scen $t $(mem_kib VmHWM "${PID[$t]}")" >>"$RESULTS"
  done
  stop_all
  report_scenario "$scen" | tee -a "$RESULTS.tables"
}

run_rss_scenario() {
  local t idle with line opened alive url
  HOLD_ARGS=(--timeout 300 --header-timeout 300)
  HOLD_ARGS_PROXYPY=(--timeout 300)
  start_scenario_targets
  log "rss: targets: $ACTIVE"
  sleep 1
  for t in $ACTIVE; do
    idle=$(mem_kib VmRSS "${PID[$t]}")
    url="http://127.0.0.1:${PORT[direct]}/small"
    "${PIN_LOAD[@]}" python3 "$HELPER_DIR/idle_conns.py" --port "${PORT[$t]}" --count "$IDLE_CONNS" \
      --hold 4 --mode "$RSS_MODE" --url "$url" >"$TMP/idle.out" 2>&1 &
    local ipid=$! i
    for i in $(seq 1 900); do
      grep -q '^READY' "$TMP/idle.out" 2>/dev/null && break
      kill -0 "$ipid" 2>/dev/null || break
      sleep 0.1
    done
    sleep 2
    with=$(mem_kib VmRSS "${PID[$t]}")
    wait "$ipid" || true
    line=$(grep '^READY' "$TMP/idle.out" || echo "READY 0 0")
    opened=$(echo "$line" | awk '{ print $2 }')
    alive=$(awk '/^ALIVE/ { print $2 }' "$TMP/idle.out"); alive=${alive:-0}
    echo "rss $t $idle $with $opened $alive" >>"$RESULTS"
    log "rss $t: idle ${idle} KiB, with conns ${with} KiB, opened $opened, alive $alive"
  done
  stop_all
  HOLD_ARGS=(); HOLD_ARGS_PROXYPY=()
  report_rss | tee -a "$RESULTS.tables"
}

{
  echo "# proxy benchmark $STAMP on $(uname -srm), $(nproc) CPUs"
  echo "# duration=$DURATION rounds=$ROUNDS connections=$CONNS idle_conns=$IDLE_CONNS rss_mode=$RSS_MODE"
  echo "# pinning: proxies core $PROXY_CORE, relay core $RELAY_CORE, load+origin core $LOAD_CORE; proxy-2w unpinned"
  echo "# proxy-bin: $PROXY_BIN"
  echo "# versions: $(nginx -v 2>&1 | tr '\n' ' ')| $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')" \
       "| tinyproxy $(tinyproxy -v 2>/dev/null | awk '{print $2}' || true)" \
       "| squid $( (squid -v 2>/dev/null || true) | awk 'NR == 1 {print $4}')" \
       "| proxy.py $("$PROXYPY_BIN" --version 2>/dev/null || echo none)" \
       "$([ "$WANT_TLS" = 0 ] || echo "| $("$MITMDUMP_BIN" --version 2>/dev/null | head -n1 || echo 'mitmproxy none')")"
  echo "# columns: run scenario target round req/s MiB/s p99ms errors closed | peak scenario target VmHWM-KiB | rss target idle-KiB with-KiB opened alive"
  echo "# TLS: run tls-ka|tls-newconn target round req/s MiB/s p99ms errors 0 responses target-cpu-ms origin-cpu-ms origin-accepts"
  echo "#      run tls-mint target round median-ms 0 p99ms errors 0 hosts target-cpu-ms origin-cpu-ms origin-accepts"
} >"$RESULTS"
: >"$RESULTS.tables"
log "results: $RESULTS"
setup_files

START=$SECONDS
for scen in $SCENARIOS; do
  case "$scen" in
    rss) run_rss_scenario ;;
    tls-*) run_tls_scenario "$scen" ;;
    *) run_throughput_scenario "$scen" ;;
  esac
done

if [ -s "$TMP/skipped" ]; then sort -u "$TMP/skipped" | sed 's/^/# /' | tee -a "$RESULTS"; fi
{ echo; echo "# tables"; cat "$RESULTS.tables"; } >>"$RESULTS"
rm -f "$RESULTS.tables"
echo
echo "# done in $(( SECONDS - START )) s; raw results and tables: $RESULTS"
