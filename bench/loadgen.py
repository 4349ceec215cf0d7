"""Closed-loop HTTP/1.1 load generator: one asyncio process, one keep-alive connection per client.

Reads a JSON spec on stdin (see bench.common.run_load), writes a JSON report on stdout. Each
client sends its request, waits for the whole response, and sends it again, until the measured
window ends or max_requests have been sent. Requests in flight at the end are waited for, so
every request sent has a known outcome. Requests are pre-encoded and responses parsed by hand:
the generator shares two cores with the server and the database, so it must stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from typing import Any

from bench.common import percentile


class Totals:
    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.latencies: list[float] = []  # seconds, requests completed inside the window


def _encode(client: dict[str, Any], host: str, port: int) -> bytes:
    body = client.get("body", "").encode()
    lines = [f"{client['method']} {client['path']} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in client.get("headers", {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, header_block = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    chunked = close = False
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _client(
    payload: bytes, host: str, port: int, start: float, end: float, timeout: float, totals: Totals
) -> None:
    reader = writer = None
    try:
        while time.perf_counter() < end and totals.sent < totals.max_requests:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as e:
                    totals.errors[f"connect: {type(e).__name__}"] += 1
                    await asyncio.sleep(0.1)
                    continue
            assert reader is not None
            totals.sent += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    writer.write(payload)
                    status, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
                totals.errors[type(e).__name__] += 1
                close, status = True, 0
            else:
                done = time.perf_counter()
                totals.statuses[status] += 1
                if start <= done < end:
                    totals.latencies.append(done - began)
            if close:
                writer.close()
                reader = writer = None
                totals.reconnects += 1
    finally:
        if writer is not None:
            writer.close()


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    totals = Totals(spec["max_requests"])
    began = time.perf_counter()
    start = began + spec["warmup"]
    end = start + spec["duration"]
    await asyncio.gather(
        *(_client(_encode(c, host, port), host, port, start, end, spec["timeout"], totals) for c in spec["clients"])
    )
    finished = time.perf_counter()
    latencies = sorted(totals.latencies)
    window = min(end, finished) - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "clients": len(spec["clients"]),
        "sent": totals.sent,
        "completed": sum(totals.statuses.values()),
        "statuses": {str(k): v for k, v in sorted(totals.statuses.items())},
        "errors": dict(totals.errors),
        "reconnects": totals.reconnects,
        "measured": {
            "seconds": round(window, 3),
            "count": len(latencies),
            "per_second": round(len(latencies) / window, 1) if window > 0 else 0.0,
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 2),
        },
        "wall_seconds": round(finished - began, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main() -> None:
    spec = json.load(sys.stdin)
    json.dump(asyncio.run(_run(spec)), sys.stdout)


if __name__ == "__main__":
    main()
