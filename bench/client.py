"""The benchmarks' asyncio HTTP/1.1 client, for what wrk cannot give (docs/benchmarks.md.in)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections import Counter
from typing import Any, NamedTuple

from bench.lib import percentile

IDLE_REUSE = 3.5  # s: gunicorn closes a connection idle for 5 s; an older one is not reused


class Transport(Exception):
    """The request got no complete response (connection refused, reset, closed, or timed out)."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def encode(method: str, path: str, headers: dict[str, str], body: bytes = b"", host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}"] if body or method in ("POST", "PUT") else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read(reader: asyncio.StreamReader) -> Response:
    status_line, _, header_block = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").partition("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in header_block.split("\r\n"))}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return Response(int(status_line.split(" ", 2)[1]), headers, body)


class Conn:
    """One keep-alive connection, reopened when it must be."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.last_used, self.opened = host, port, 0.0, 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, payload: bytes, timeout: float) -> tuple[Response, float, float]:
        """Send one request, read its response; return it with its send and receive times (monotonic)."""
        reused = self.writer is not None and time.monotonic() - self.last_used < IDLE_REUSE
        if not reused:
            self.close()
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            except OSError as e:
                raise Transport(f"connect: {type(e).__name__}") from e
            self.opened += 1
        assert self.reader is not None
        assert self.writer is not None
        sent = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(payload)
                response = await _read(self.reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            self.close()
            # A kept-alive connection the server closed meanwhile fails before any byte: send once more, on a new
            # one (scenario orders carry an Idempotency-Key, so one that did arrive is not placed twice).
            if reused and not isinstance(e, TimeoutError) and not getattr(e, "partial", b""):
                return await self.send(payload, timeout)
            raise Transport(type(e).__name__) from e
        self.last_used = received = time.monotonic()
        if response.headers.get("connection", "").lower() == "close":
            self.close()
        return response, sent, received

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    """At most `size` connections in use at once; the most recently used free one is taken first."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.conns = [Conn(host, port) for _ in range(size)]
        self.free: asyncio.LifoQueue[Conn] = asyncio.LifoQueue()
        for conn in reversed(self.conns):
            self.free.put_nowait(conn)

    async def send(self, payload: bytes, timeout: float) -> tuple[Response, float, float]:
        conn = await self.free.get()
        try:
            return await conn.send(payload, timeout)
        finally:
            self.free.put_nowait(conn)


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Send each client's request over and over on its own connection; tally it (spec: docs/benchmarks.md.in)."""
    host, port, tally = spec["host"], spec["port"], [h.lower() for h in spec.get("tally", [])]
    start = time.monotonic() + spec.get("warmup", 0)
    end, count, done = start + spec.get("duration", 3600), spec.get("count", 1 << 60), list[list[Any]]()
    measured = Counter[str]()  # requests started in the measured span, so `count` bounds them

    async def client(c: dict[str, Any]) -> None:
        conn, every = Conn(host, port), c.get("every", 0)
        payload = encode(c["method"], c["path"], c.get("headers", {}), c.get("body", "").encode(), host)
        while (now := time.monotonic()) < end and measured["n"] < count:
            measured["n"] += now >= start
            try:
                r, sent, received = await conn.send(payload, spec.get("timeout", 15.0))
            except Transport as e:
                done.append([c["path"], now, now, time.monotonic(), 0, str(e)])
                await asyncio.sleep(0.05)
                continue
            problem = r.headers.get("content-type", "").startswith("application/problem+json")
            detail = r.body.decode(errors="replace") if problem else ""
            done.append([c["path"], now, sent, received, r.status, detail, *(r.headers.get(h, "") for h in tally)])
            if every:
                await asyncio.sleep(max(0.0, now + every - time.monotonic()))
        conn.close()

    began = time.monotonic()
    await asyncio.gather(*(client(c) for c in spec["clients"]))
    answered = [d for d in done if d[4]]
    latencies = [d[3] - d[2] for d in answered if d[2] >= start]
    seconds = max((d[3] for d in answered if d[2] >= start), default=start) - start
    phase = ("warmup", "measured")
    return {
        "clients": len(spec["clients"]), "sent": len(done), "statuses": Counter(d[4] for d in answered),
        "errors": Counter(d[5] for d in done if not d[4]), "count": len(latencies), "seconds": round(seconds, 3),
        "responses": Counter("|".join([phase[d[2] >= start], str(d[4]), *d[6:]]) for d in answered) if tally else {},
        "per_second": round(len(latencies) / seconds, 1) if seconds > 0 else 0.0,
        "mean_ms": round(1000 * sum(latencies) / max(len(latencies), 1), 2),
        **{f"p{q}_ms": round(percentile(latencies, q) * 1000, 2) for q in (50, 99, 100)},
        "cpu_seconds": round(time.process_time(), 2), "wall_seconds": round(time.monotonic() - began, 2),
        **({"records": [[d[0], d[1], d[3] - d[1], *d[4:]] for d in done]} if spec.get("records") else {}),
    }  # fmt: skip


if __name__ == "__main__":
    gc.disable()  # a bounded run whose records hold no cycles: no collector pauses inside the latencies
    json.dump(asyncio.run(closed_loop(json.load(sys.stdin))), sys.stdout)
