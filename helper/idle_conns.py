#!/usr/bin/env python3
"""Hold N idle client connections open against a TCP server (loopback only).

Used by helper/benchmark.sh for the `rss` scenario: it opens --count
connections to HOST:PORT, prints "READY <opened> <failed>" on stdout, keeps
them open for --hold seconds (while the caller reads the server's RSS), then
checks how many the server still keeps open, prints "ALIVE <n>", closes them
all and exits.

Modes:
  open     connect and send nothing (a fresh, idle client connection)
  request  send one keep-alive GET through the proxy (absolute-form URL given
           by --url), read the response, then stay idle (a used keep-alive
           connection, which may also pin an upstream connection)
"""

import argparse
import errno
import ipaddress
import resource
import socket
import sys
import time


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def read_response(sock, deadline):
    """Read one HTTP/1.1 response with Content-Length; return True if complete."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        if time.monotonic() > deadline:
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def still_open(sock):
    """An idle connection is alive if a non-blocking read would block."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return len(data) > 0  # unexpected bytes, but the socket is open
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to hold after READY")
    ap.add_argument("--mode", choices=("open", "request"), default="open")
    ap.add_argument("--url", help="absolute-form URL for --mode request")
    ap.add_argument("--timeout", type=float, default=60.0, help="overall time limit for opening")
    ap.add_argument("--max-failures", type=int, default=3,
                    help="stop opening after this many failures in a row (the server stopped accepting)")
    args = ap.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("idle_conns.py: refusing a non-loopback address")
    if args.mode == "request" and not args.url:
        sys.exit("idle_conns.py: --mode request needs --url")

    raise_nofile(args.count + 64)
    request = None
    if args.mode == "request":
        hostport = args.url.split("/")[2]
        request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle_conns\r\n\r\n" % (args.url, hostport)).encode()

    socks, failed, in_a_row = [], 0, 0
    deadline = time.monotonic() + args.timeout
    for _ in range(args.count):
        if time.monotonic() > deadline or in_a_row >= args.max_failures:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect((args.host, args.port))
            if request is not None:
                s.sendall(request)
                if not read_response(s, time.monotonic() + 2.0):
                    raise OSError(errno.EPROTO, "no complete response")
            s.setblocking(False)
            socks.append(s)
            in_a_row = 0
        except OSError:
            failed += 1
            in_a_row += 1
            s.close()
    print("READY %d %d" % (len(socks), failed), flush=True)
    time.sleep(args.hold)
    alive = sum(1 for s in socks if still_open(s))
    print("ALIVE %d" % alive, flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
