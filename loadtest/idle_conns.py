#!/usr/bin/env python3
"""Opens many idle HTTP/1.1 keep-alive connections and holds them (stdlib only, asyncio).

For loadtest/bench_memory.sh: the server's memory per idle kept-alive connection. Each
connection is bound to one of --sources source addresses (round robin, so no one address runs
out of ephemeral ports), connects to --target, sends one `GET --path HTTP/1.1` (keep-alive, the
HTTP/1.1 default) and reads the whole response (Content-Length or chunked). Then it stays open
and idle. At most --concurrency connections are being opened at once (the listen backlogs stay
short: no SYN is dropped and retried a second later); the opening phase stops at --timeout
seconds.

Once every connection has its response (or has failed), one line on stdout:
  READY {"connections": N, "ok": n, "statuses": {...}, "errors": {...}, "elapsed_s": s, "timed_out": b}
then it holds the `ok` connections open until SIGTERM, SIGINT or SIGUSR1 arrives, with
--wait-stdin also until stdin reaches EOF or a line `close` (a background job of a script has
/dev/null as stdin, hence the signals), or after --hold seconds; it closes them all (FIN), prints
  CLOSED {"closed": n, "closed_by_peer": m}
and exits 0 (1 when not every connection got a 2xx answer). `closed_by_peer` counts the
connections the server had already closed (found readable at close time: EOF).

  python3 loadtest/idle_conns.py --target 127.0.0.1:8080 --connections 10000 \
      --sources 127.0.1.1,127.0.1.2,127.0.1.3,127.0.1.4,127.0.1.5 &
  ...; kill -TERM $!
"""

import argparse
import asyncio
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import time
from collections import Counter

# http_load.py sits next to this script; importing it leaves no __pycache__ in loadtest/.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from http_load import count_error, get_request, parse_head, parse_target, run_bounded, split_stats  # noqa: E402

# Linux: let connect() pick the source port, so bind() to an address reserves no port early.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def parse_response(buf: bytes):
    """(status, complete) for the bytes of one response read so far; status None until the
    header is complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, False
    status, length, chunked = parse_head(buf[:end])
    body = buf[end + 4:]
    if chunked:
        return status, body.endswith(b"0\r\n\r\n")
    return status, len(body) >= length


async def open_one(loop, source, host, port, request, stats, held):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request)
        buf = b""
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionResetError("closed before the response was complete")
            buf += chunk
            status, complete = parse_response(buf)
            if complete:
                break
        stats[status] += 1
        if 200 <= status < 300:
            held.append(sock)
            sock = None
    except (OSError, ValueError, IndexError) as e:
        count_error(stats, e)
    finally:
        if sock is not None:
            sock.close()


async def open_all(args, held):
    host, port = parse_target(args.target)
    sources = args.sources.split(",")
    request = get_request(args.path, host, port, "idle_conns")
    loop = asyncio.get_running_loop()
    stats = Counter()

    def job(i):
        return open_one(loop, sources[i % len(sources)], host, port, request, stats, held)

    t0 = time.perf_counter()
    timed_out = await run_bounded(job, range(args.connections), args.concurrency, args.timeout)
    statuses, errors = split_stats(stats)
    return {
        "connections": args.connections,
        "ok": len(held),
        "statuses": statuses,
        "errors": errors,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "timed_out": timed_out,
    }


def install_stop_signals():
    """SIGTERM, SIGINT and SIGUSR1 end the hold; returns the list they append to."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda *_: stop.append(1))
    return stop


def hold(seconds: float, stop: list, wait_stdin: bool):
    """Blocks until a stop signal, with wait_stdin stdin's EOF or a `close` line, or `seconds`."""
    deadline = time.monotonic() + seconds
    stdin_open = wait_stdin
    while not stop:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            if stdin_open:
                ready, _, _ = select.select([sys.stdin], [], [], min(left, 0.1))
                if ready:
                    line = sys.stdin.readline()
                    if not line or line.strip() == "close":
                        break
            else:
                time.sleep(min(left, 0.1))
        except InterruptedError:
            continue
        except (OSError, ValueError):
            stdin_open = False  # no usable stdin: wait for a signal or the deadline


def close_all(held):
    """Closes every held socket; counts the ones the peer had already closed."""
    by_peer = 0
    for sock in held:
        # A non-blocking peek rather than select(): select() refuses descriptors above 1023,
        # and a run holds thousands.
        try:
            sock.setblocking(False)
            if sock.recv(1, socket.MSG_PEEK) == b"":
                by_peer += 1
        except BlockingIOError:
            pass  # nothing to read: still open at the other end
        except OSError:
            by_peer += 1
        sock.close()
    return by_peer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port of the server")
    ap.add_argument("--path", default="/")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--sources", default="127.0.1.1,127.0.1.2,127.0.1.3,127.0.1.4,127.0.1.5",
                    help="comma-separated source addresses in 127.0.0.0/8, used in turn")
    ap.add_argument("--concurrency", type=int, default=256, help="connections being opened at once")
    ap.add_argument("--timeout", type=float, default=60, help="bound of the opening phase, seconds")
    ap.add_argument("--hold", type=float, default=300, help="longest time to hold the connections, seconds")
    ap.add_argument("--wait-stdin", action="store_true", help="also stop holding at stdin's EOF or a `close` line")
    args = ap.parse_args()
    for s in args.sources.split(","):
        if ipaddress.IPv4Address(s) not in ipaddress.IPv4Network("127.0.0.0/8"):
            sys.exit(f"source {s} is not in 127.0.0.0/8")
    # Installed first: a signal during the opening phase ends the hold as soon as it starts.
    stop = install_stop_signals()
    held = []
    result = asyncio.run(open_all(args, held))
    print("READY " + json.dumps(result), flush=True)
    hold(args.hold, stop, args.wait_stdin)
    by_peer = close_all(held)
    print("CLOSED " + json.dumps({"closed": len(held), "closed_by_peer": by_peer}), flush=True)
    return 0 if result["ok"] == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
