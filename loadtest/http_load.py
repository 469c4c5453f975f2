"""What the stdlib HTTP/1.1 load generators of loadtest/ share (idle_conns.py, many_clients.py).

They import it from their own directory: the target, the GET request, the response header,
their counters (one Counter: int keys are statuses, "error:<ExceptionName>" keys failures) and
the bounded, time-limited run of their connections.
"""

import asyncio


def parse_target(target: str):
    """(host, port) of "host:port"."""
    host, _, port = target.rpartition(":")
    return host, int(port)


def get_request(path: str, host: str, port: int, user_agent: str) -> bytes:
    """One keep-alive `GET path HTTP/1.1` (keep-alive is HTTP/1.1's default)."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\n\r\n".encode()


def parse_head(head: bytes):
    """(status, content_length, chunked) of a response header (status line and header lines,
    with or without the blank line that ends it); content_length is 0 when absent."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


def count_error(stats, e: BaseException):
    """Counts a failed connection under its exception's name."""
    stats[f"error:{type(e).__name__}"] += 1


def split_stats(stats):
    """({status: count}, {exception name: count}) of the counters, statuses as strings."""
    statuses = {str(k): v for k, v in stats.items() if isinstance(k, int)}
    errors = {k[6:]: v for k, v in stats.items() if isinstance(k, str) and k.startswith("error:")}
    return statuses, errors


async def run_bounded(job, items, concurrency: int, timeout: float) -> bool:
    """Awaits job(item) for every item, at most `concurrency` at once; cancels what is left
    after `timeout` seconds. True when something was cancelled."""
    sem = asyncio.Semaphore(concurrency)

    async def guarded(item):
        async with sem:
            await job(item)

    tasks = [asyncio.ensure_future(guarded(item)) for item in items]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return bool(pending)
