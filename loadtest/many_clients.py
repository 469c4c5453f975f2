#!/usr/bin/env python3
"""HTTP/1.1 load from many distinct client addresses (stdlib only, asyncio).

wrk cannot choose its source address, so this client binds each connection to its own
loopback address (127.0.0.0/8 is all local on Linux), which the proxy sees as a distinct client.
Client i uses the (offset + i)-th usable address counted from --first (octets 0 and 255 are
skipped), opens one keep-alive connection, sends --requests-per-client GET requests one after
another, and closes it. At most --concurrency clients run at once; the whole run stops at --timeout seconds.

Prints one JSON object on stdout:
  clients, requests, statuses {code: count}, errors {kind: count}, elapsed_s, rps,
  latency_ms {p50, p90, p99, max}, first_address, last_address, timed_out

  python3 loadtest/many_clients.py --target 127.0.0.1:8080 --clients 10000 --requests-per-client 5
"""

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
import time
from collections import Counter

# http_load.py sits next to this script; importing it leaves no __pycache__ in loadtest/.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from http_load import count_error, get_request, parse_head, parse_target, run_bounded, split_stats  # noqa: E402


def client_addresses(first: str, count: int):
    """`count` loopback addresses from `first` on, skipping ones ending in .0 or .255."""
    n = int(ipaddress.IPv4Address(first))
    last = int(ipaddress.IPv4Address("127.255.255.254"))
    out = []
    while len(out) < count:
        if n > last:
            raise SystemExit(f"not enough loopback addresses after {first} for {count} clients")
        if n & 0xFF not in (0, 255):
            out.append(str(ipaddress.IPv4Address(n)))
        n += 1
    return out


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one response with a Content-Length body (or none); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, chunked = parse_head(head)
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def one_client(source, host, port, path, n_requests, stats, latencies):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    writer = None
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        request = get_request(path, host, port, "many_clients")
        for _ in range(n_requests):
            t0 = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - t0)
            stats[status] += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        count_error(stats, e)
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        else:
            sock.close()


async def run(args):
    host, port = parse_target(args.target)
    addresses = client_addresses(args.first, args.offset + args.clients)[args.offset:]
    stats = Counter()
    latencies = []

    def job(addr):
        return one_client(addr, host, port, args.path, args.requests_per_client, stats, latencies)

    t0 = time.perf_counter()
    timed_out = await run_bounded(job, addresses, args.concurrency, args.timeout)
    elapsed = time.perf_counter() - t0

    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 3)

    statuses, errors = split_stats(stats)
    requests = sum(statuses.values())
    return {
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "requests": requests,
        "statuses": statuses,
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "rps": round(requests / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "max": round(latencies[-1] * 1000, 3) if latencies else None},
        "first_address": addresses[0],
        "last_address": addresses[-1],
        "timed_out": timed_out,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port of the proxy")
    ap.add_argument("--path", default="/")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--first", default="127.1.0.1", help="first source address (in 127.0.0.0/8)")
    ap.add_argument("--offset", type=int, default=0,
                    help="skip this many usable addresses after --first (for disjoint populations)")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=300, help="stop the whole run after this many seconds")
    args = ap.parse_args()
    if not ipaddress.IPv4Address(args.first) in ipaddress.IPv4Network("127.0.0.0/8"):
        sys.exit("--first must be in 127.0.0.0/8")
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
