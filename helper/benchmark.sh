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
IDLE_CONNS=10000
RSS_MODE=open
ONLY=""
TARGETS_WANTED=""
PROXY_BIN="$ROOT/target/release/proxy"
BASE_BIN=""
BENCH_USER=bench
BENCH_PASS=bench
OUT_DIR="$ROOT/target/bench"
PROXYPY_BIN=""
INSTALL=0
KEEP_TMP=0
PROXY_CORE=0
LOAD_CORE=1
RELAY_CORE=0

ALL_SCENARIOS="ka newconn 1m connect rss"
ALL_TARGETS="direct relay proxy proxy-log proxy-base proxy-2w proxy-plugins proxy.py tinyproxy squid"

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
  proxy.py   proxy.py 2.4.10 (--num-acceptors 1 --num-workers 1), pinned to core $PROXY_CORE
  tinyproxy  tinyproxy (MaxClients 2000, logging off), pinned to core $PROXY_CORE
  squid      squid (-N, no cache, no disk), pinned to core $PROXY_CORE
  The load generator and the origin run on core $LOAD_CORE, the relay on core
  $RELAY_CORE (the core of the proxy under test, so that it competes on equal terms).

Scenarios: $ALL_SCENARIOS
  ka        small GET, keep-alive, c=$CONNS (wrk; absolute-form requests to proxies)
  newconn   small GET, one new client connection per request (Connection: close)
  1m        1 MiB downloads, keep-alive, c=$CONNS (MiB/s)
  connect   small GETs over TLS through CONNECT tunnels (hey -x http://proxy https://origin)
  rss       idle RSS after start, then RSS with --idle-conns idle client connections

Options:
  --duration D        length of each measured run (wrk/hey syntax: 5s, 1m)  [$DURATION]
  --warmup D          unmeasured run before round 1 of each pair, 0 = none  [$WARMUP]
  --rounds N          rounds; targets are interleaved within each round  [$ROUNDS]
  --connections N     concurrent client connections  [$CONNS]
  --only LIST         comma-separated scenarios to run  [all]
  --targets LIST      comma-separated targets to run  [all that are available]
  --proxy-bin PATH    our proxy binary  [target/release/proxy]
  --base-bin PATH     the proxy-base target's binary  [none: target skipped]
  --proxypy-bin PATH  proxy.py's 'proxy' script  [target/bench/venv-proxypy/bin/proxy]
  --idle-conns N      idle connections for the rss scenario  [$IDLE_CONNS]
  --rss-mode M        open: connect and send nothing; request: one keep-alive GET, then idle  [$RSS_MODE]
  --out-dir DIR       where results-<timestamp>.txt goes  [target/bench]
  --keep-tmp          keep the temporary directory (configs, logs)
  --install           apt-get install nginx libnginx-mod-stream wrk hey squid tinyproxy
                      openssl python3 (needs root), and pip install proxy.py==2.4.10 into
                      target/bench/venv-proxypy; then run. Nothing is installed without it.
  -h, --help          this text

Default run: 5 scenarios x 8 targets x 3 rounds x 5 s, about 11 minutes.
Quick check: helper/benchmark.sh --duration 3s --rounds 1 --only ka
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
    --only) ONLY=${2//,/ }; shift 2 ;;
    --targets) TARGETS_WANTED=${2//,/ }; shift 2 ;;
    --proxy-bin) PROXY_BIN=$2; shift 2 ;;
    --base-bin) BASE_BIN=$2; shift 2 ;;
    --proxypy-bin) PROXYPY_BIN=$2; shift 2 ;;
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
[[ "$IDLE_CONNS" =~ ^[1-9][0-9]*$ ]] || die "--idle-conns must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*[sm]?$ ]] || die "--duration must look like 5s or 1m"
[[ "$WARMUP" =~ ^[0-9]+[sm]?$ ]] || die "--warmup must look like 1s or 0"
case "$RSS_MODE" in open|request) ;; *) die "--rss-mode must be open or request" ;; esac
SCENARIOS=${ONLY:-$ALL_SCENARIOS}
for s in $SCENARIOS; do [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario: $s"; done
for t in $TARGETS_WANTED; do [[ " $ALL_TARGETS " == *" $t "* ]] || die "unknown target: $t"; done
VENV="$ROOT/target/bench/venv-proxypy"
PROXYPY_BIN=${PROXYPY_BIN:-$VENV/bin/proxy}

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
  local pkgs=(nginx libnginx-mod-stream wrk squid tinyproxy openssl python3 python3-venv procps util-linux)
  if apt-cache policy hey 2>/dev/null | grep -q 'Candidate: [0-9]'; then pkgs+=(hey)
  else log "hey is not packaged here: the connect scenario will be skipped"; fi
  apt-get install -y --no-install-recommends "${pkgs[@]}" || { [ $made_prc = 0 ] || rm -f "$prc"; die "apt-get install failed"; }
  [ $made_prc = 0 ] || rm -f "$prc"
  if [ ! -x "$VENV/bin/proxy" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'proxy.py==2.4.10'
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
    if [ "$n" = direct ]; then unset "PID[direct]"; else stop_proc "$n"; fi   # direct is the origin
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
setup_files() {
  mkdir -p "$TMP/www" "$TMP/nginx-tmp"
  head -c 1048576 /dev/urandom >"$TMP/www/1m"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 \
    || die "openssl could not make a self-signed certificate"
  chmod -R a+rX "$TMP"
}

start_origin() {
  read -r OP OTP < <(free_ports 2)
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
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    location = /small { default_type text/plain; return 200 "hello from the origin\\n"; }
    location = /1m { root $TMP/www; default_type application/octet-stream; }
  }
}
EOF
  spawn origin "${PIN_LOAD[@]}" nginx -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf"
  wait_port origin "$OP" || { cat "$TMP/origin.out" "$TMP/origin-error.log" >&2 2>/dev/null; die "nginx origin did not start"; }
  PORT[direct]=$OP; PORT[direct-tls]=$OTP
  PID[direct]=${PID[origin]}   # for RSS readings only; stopped as 'origin'
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
start_target() { # name -> 0 if started (PORT[name] set)
  local t=$1 p
  case "$t" in
    direct) return 0 ;;
    relay) start_relay ;;
    proxy|proxy-log|proxy-base|proxy-2w|proxy-plugins)
      [ -x "$PROXY_BIN" ] || return 1
      if [ "$t" = proxy-base ] && { [ -z "$BASE_BIN" ] || [ ! -x "$BASE_BIN" ]; }; then return 1; fi
      rm -f "$TMP/$t.port"
      if [ "$t" = proxy-base ]; then
        spawn "$t" "${PIN_PROXY[@]}" "$BASE_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e
      elif [ "$t" = proxy ]; then
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e
      elif [ "$t" = proxy-log ]; then
        # The default log level: an access-log line per request, written to a real file.
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file "$TMP/proxy-log.log"
      elif [ "$t" = proxy-plugins ]; then
        # The cost of the chain: basic auth plus a host filter on every request.
        spawn "$t" "${PIN_PROXY[@]}" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 1 --log-file /dev/null --log-level e \
          --basic-auth "$BENCH_USER:$BENCH_PASS" --plugins FilterByUpstreamHostPlugin
      else
        spawn "$t" "$PROXY_BIN" --hostname 127.0.0.1 --port 0 --port-file "$TMP/$t.port" \
          --num-workers 2 --log-file /dev/null --log-level e
      fi
      local i
      for i in $(seq 1 100); do
        [ -s "$TMP/$t.port" ] && break
        kill -0 "${PID[$t]}" 2>/dev/null || break
        sleep 0.1
      done
      p=$( { tr -dc 0-9 <"$TMP/$t.port"; } 2>/dev/null || true)
      if [ -z "$p" ] || ! wait_port "$t" "$p"; then stop_proc "$t"; return 1; fi
      PORT[$t]=$p ;;
    proxy.py)
      [ -x "$PROXYPY_BIN" ] || return 1
      p=$(free_ports 1)
      spawn "$t" "${PIN_PROXY[@]}" "$PROXYPY_BIN" --hostname 127.0.0.1 --port "$p" \
        --num-acceptors 1 --num-workers 1 --log-file /dev/null --log-level e
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

is_proxy() { case "$1" in direct|relay) return 1 ;; *) return 0 ;; esac; }

# ---------------------------------------------------------------- load generators
write_wrk_script() { # file path connection_close(0/1) [proxy_auth(0/1)]
  local f=$1 path=$2 close=$3 auth=${4:-0}
  {
    echo "wrk.method = \"GET\""
    echo "wrk.path = \"$path\""
    echo "wrk.headers[\"Host\"] = \"127.0.0.1:${PORT[direct]}\""
    [ "$close" = 0 ] || echo "wrk.headers[\"Connection\"] = \"close\""
    [ "$auth" = 0 ] || echo "wrk.headers[\"Proxy-Authorization\"] = \"Basic $(printf '%s:%s' "$BENCH_USER" "$BENCH_PASS" | base64)\""
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
    ka|newconn|1m)
      path=/small; [ "$scen" = 1m ] && path=/1m
      [ "$scen" = newconn ] && close=1
      url="http://127.0.0.1:${PORT[direct]}$path"
      # Proxies get absolute-form request lines; direct and relay get origin-form.
      if [ "$t" = proxy-plugins ]; then write_wrk_script "$TMP/wrk.lua" "$url" "$close" 1
      elif is_proxy "$t"; then write_wrk_script "$TMP/wrk.lua" "$url" "$close"
      else write_wrk_script "$TMP/wrk.lua" "$path" "$close"; fi
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
      # hey: errors = non-200 responses + transport errors, minus requests cut off by -z's end.
      echo "$out" | awk '
        /Requests\/sec:/ { rps = $2 }
        /Total data:/ { bytes = $3 }
        /Total:/ && /secs/ { total = $2 }
        /99%% in|99% in/ { p99 = $3 * 1000 }
        /Status code distribution:/ { sec = "s"; next }
        /Error distribution:/ { sec = "e"; next }
        sec == "s" && /^ *\[[0-9]+\]/ { code = $1; gsub(/[^0-9]/, "", code); if (code != 200) err += $2 }
        sec == "e" && /^ *\[[0-9]+\]/ { if ($0 !~ /canceled|Client.Timeout exceeded while awaiting headers/) { n = $1; gsub(/[^0-9]/, "", n); err += n } }
        END { if (rps == "") print "0 0 0 -1 0"; else printf "%.1f %.2f %.3f %d 0\n", rps, (total > 0 ? bytes / total / 1048576 : 0), p99, err }' ;;
  esac
}

# ---------------------------------------------------------------- reporting
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

report_scenario() { # scenario
  local scen=$1 col=5 unit="req/s" t med p99 err closed hwm dmed rmed
  [ "$scen" = 1m ] && { col=6; unit="MiB/s"; }
  dmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "direct" { print $c }' "$RESULTS" | median)
  rmed=$(awk -v s="$scen" -v c="$col" '$1 == "run" && $2 == s && $3 == "relay" { print $c }' "$RESULTS" | median)
  echo
  echo "== $scen: median of $ROUNDS round(s) x $DURATION, c=$CONNS"
  printf "%-10s %12s %9s %7s %8s %12s %8s %8s\n" target "$unit" "p99 ms" errors closed "peakRSS MiB" "/direct" "/relay"
  echo "   (errors: failed requests; closed: the server closed a keep-alive client connection after a response)"
  for t in $ACTIVE; do
    med=$(awk -v s="$scen" -v t="$t" -v c="$col" '$1 == "run" && $2 == s && $3 == t { print $c }' "$RESULTS" | median)
    [ "$med" = nan ] && continue
    p99=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { print $7 }' "$RESULTS" | median)
    err=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $8 } END { print e + 0 }' "$RESULTS")
    closed=$(awk -v s="$scen" -v t="$t" '$1 == "run" && $2 == s && $3 == t { e += $9 } END { print e + 0 }' "$RESULTS")
    hwm=$(awk -v s="$scen" -v t="$t" '$1 == "peak" && $2 == s && $3 == t { print $4 }' "$RESULTS" | tail -n1)
    awk -v t="$t" -v m="$med" -v p="$p99" -v e="$err" -v c="$closed" -v h="${hwm:-0}" -v d="$dmed" -v r="$rmed" 'BEGIN {
      printf "%-10s %12.1f %9.2f %7d %8d %12.1f %8s %8s\n", t, m, p, e, c, h / 1024,
        (d != "nan" && d > 0 ? sprintf("%.2f", m / d) : "-"), (r != "nan" && r > 0 ? sprintf("%.2f", m / r) : "-") }'
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

# ---------------------------------------------------------------- scenarios
start_scenario_targets() { # -> sets ACTIVE (targets that started), in order
  start_origin
  ACTIVE=""
  local t
  for t in ${TARGETS_WANTED:-$ALL_TARGETS}; do
    if start_target "$t"; then ACTIVE="$ACTIVE $t"
    else echo "skipped $t: not available or did not start" >>"$TMP/skipped"; fi
  done
  ACTIVE=${ACTIVE# }
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
       "| proxy.py $("$PROXYPY_BIN" --version 2>/dev/null || echo none)"
  echo "# columns: run scenario target round req/s MiB/s p99ms errors closed | peak scenario target VmHWM-KiB | rss target idle-KiB with-KiB opened alive"
} >"$RESULTS"
: >"$RESULTS.tables"
log "results: $RESULTS"
setup_files

START=$SECONDS
for scen in $SCENARIOS; do
  case "$scen" in
    rss) run_rss_scenario ;;
    *) run_throughput_scenario "$scen" ;;
  esac
done

if [ -s "$TMP/skipped" ]; then sort -u "$TMP/skipped" | sed 's/^/# /' | tee -a "$RESULTS"; fi
{ echo; echo "# tables"; cat "$RESULTS.tables"; } >>"$RESULTS"
rm -f "$RESULTS.tables"
echo
echo "# done in $(( SECONDS - START )) s; raw results and tables: $RESULTS"
