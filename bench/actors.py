"""The scenario's actors on one clock (`python -m bench.actors`: spec on stdin, records on stdout)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.client import Conn, Pool, Response, Transport, encode

TYPE_RE = re.compile(rb'"type"\s*:\s*"[^"]*?([a-z0-9-]+)"')
ID_RE = re.compile(rb'"id"\s*:\s*(\d+)')
# The middleware's Server-Timing: its decision's wall time, what it decided, and its thread's CPU time.
TIMING_RE = re.compile(r'resilience;dur=([0-9.]+);desc="([a-z]+)"(?:, resilience-cpu;dur=([0-9.]+))?')
# Each record, a list (25,000 of them stay cheap to build and dump). timing: [wall ms, "admitted" | "refused",
# CPU ms or None] or None; quota: the answer carried a RateLimit field, i.e. the limiter was asked.
FIELDS = ("actor", "endpoint", "sent", "received", "status", "problem", "breaker", "rid", "timing", "quota", "extra")
User = dict[str, Any]
Outcome = tuple[Response | None, list[Any]]  # the response (None if none came) and its record


def address(block: int, n: int) -> str:
    """Return the n-th client address of a block: 10.<block>.<n // 250>.<n % 250 + 1>."""
    return f"10.{block}.{n // 250}.{n % 250 + 1}"


class Load:
    """The actors' shared state: the clock, the records, what happened."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec, self.t0, self.seq, self.events, self.group = spec, spec["t0"], 0, {}, asyncio.TaskGroup()
        self.records, self.samples, self.errors, self.late = list[list[Any]](), list[list[Any]](), Counter(), Counter()

    def conn(self) -> Conn:
        return Conn(self.spec["host"], self.spec["port"])

    def rel(self, t: float) -> float:
        return round(t - self.t0, 6)

    async def until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))

    async def call(self, conn: Conn | Pool, actor: str, endpoint: str, *request: Any, extra: Any = None) -> Outcome:
        """Send (method, path, headers[, body]) and record it; return the response (None if none came) and record."""
        method, path, headers, body = (*request, None)[:4]
        self.seq += 1
        rid = f"sc{self.seq}"
        payload = encode(method, path, {"X-Request-ID": rid, **headers}, json.dumps(body).encode() if body else b"")
        before = time.monotonic()
        try:
            r, sent, received = await conn.send(payload, 30.0)
        except Transport as e:
            self.errors[f"{actor} {endpoint}: {e}"] += 1
            record = [actor, endpoint, self.rel(before), self.rel(time.monotonic()), 0, str(e), "", rid, None, False]
            self.records.append([*record, extra])
            return None, self.records[-1]
        problem = TYPE_RE.search(r.body) if r.status >= 400 else None
        t = TIMING_RE.search(r.headers.get("server-timing", ""))
        record = [actor, endpoint, self.rel(sent), self.rel(received), r.status, problem[1].decode() if problem else ""]
        record += [r.headers.get("x-circuit-breaker-state", ""), rid]
        record += [[float(t[1]), t[2], float(t[3]) if t[3] else None] if t else None, "ratelimit" in r.headers, extra]
        self.records.append(record)
        return r, record


async def order(load: Load, user: User, rng: random.Random, actor: str, key: str, book: int, n: int) -> None:
    """Order n copies of a book; a legitimate customer sometimes retries with the same key, as after a lost answer."""
    headers = {**user["headers"], "Content-Type": "application/json", "Idempotency-Key": key}
    request = ("POST", "/api/orders", headers, {"lines": [{"book_id": book, "quantity": n}]})
    r, record = await load.call(user["conn"], actor, "order", *request, extra=[book, n])
    if r is None or r.status != 201:
        return
    record[-1].append(int(ID_RE.search(r.body)[1]))
    user.setdefault("orders", []).append(record[-1][2])
    if actor == "legit" and rng.random() < 0.1:
        again, record = await load.call(user["conn"], actor, "order-replay", *request, extra=list(record[-1]))
        if again is not None and again.status == 201:  # must name the first order, and say it is a replay
            record[-1] += [int(ID_RE.search(again.body)[1]), again.headers.get("idempotent-replayed") == "true"]


async def act(load: Load, user: User, rng: random.Random) -> None:
    """One action of a legitimate customer: 28% list, 25% detail, 30% search, 13% order, 4% cancel."""
    spec, roll, h, conn = load.spec, rng.random(), user["headers"], user["conn"]
    async with user["lock"]:  # a person does one thing at a time
        if roll < 0.28:
            page = rng.randint(1, spec["list_pages"])
            await load.call(conn, "legit", "list", "GET", f"/api/books?page={page}&page_size=20", h)
        elif roll < 0.53:
            await load.call(conn, "legit", "detail", "GET", f"/api/books/{rng.choice(spec['book_ids'])}", h)
        elif roll < 0.83:
            words = "+".join(rng.sample(spec["words"], k=rng.choice((1, 1, 2))))
            await load.call(conn, "legit", "search", "GET", f"/api/books/search?q={words}", h)
        elif roll < 0.96 or not user.get("orders"):
            user["keys"] += 1
            book = rng.choice(spec["hot_ids"] if rng.random() < 0.25 else spec["in_stock_ids"])
            await order(load, user, rng, "legit", f"u{user['index']}-{user['keys']}", book, 1)
        else:
            pk = user["orders"].pop(rng.randrange(len(user["orders"])))
            await load.call(conn, "legit", "cancel", "POST", f"/api/orders/{pk}/cancel", h, extra=pk)


async def legit(load: Load, users: list[User]) -> None:
    """Start actions open-loop, Poisson at legit_rate, each for a random customer."""
    rng, at = random.Random(load.spec["seed"]), 0.0
    while (at := at + rng.expovariate(load.spec["legit_rate"])) < load.spec["end"]:
        await load.until(at)
        load.group.create_task(act(load, rng.choice(users), random.Random(rng.random())))


async def fixed_rate(load: Load, actor: str, rate: float, size: int, make: Callable[[int], tuple[Any, ...]]) -> int:
    """Send make(n) = (endpoint, method, path, headers[, body]) every 1/rate s through the attack, open-loop."""
    pool, (start, end) = Pool(load.spec["host"], load.spec["port"], size), load.spec["attack"]
    for n in range(int((end - start) * rate)):
        await load.until(start + n / rate)
        load.late[actor] += time.monotonic() - (load.t0 + start + n / rate) > 0.05  # behind schedule by > 50 ms
        load.group.create_task(load.call(pool, actor, *make(n)))
    return sum(c.opened for c in pool.conns)


async def spike(load: Load, index: int, at: float) -> None:
    """Let a crowd of customers, each from its own address on a new connection, order hot books within seconds."""
    rng, tokens = random.Random(load.spec["seed"] + 1000 + index), load.spec["tokens"]

    async def one(n: int, delay: float) -> None:
        await load.until(at + delay)
        token, ip = tokens[(index * 97 + n) % len(tokens)], address(2 + index, n)
        user = {"conn": load.conn(), "headers": {"Authorization": f"Token {token}", "X-Forwarded-For": ip}}
        book, copies = rng.choice(load.spec["hot_ids"]), rng.choice((1, 1, 2))
        await order(load, user, rng, "spike", f"spike{index}-{n}", book, copies)
        user["conn"].close()

    crowd = range(load.spec["spike_customers"])
    await asyncio.gather(*(one(n, rng.uniform(0, load.spec["spike_seconds"])) for n in crowd))


async def staff(load: Load) -> None:
    """Make search fail, then crawl, through the ops API on schedule; read the slow fault's peak before it ends."""
    conn, spec, json_ = load.conn(), load.spec, {"Content-Type": "application/json"}
    headers = {"Authorization": f"Token {spec['staff_token']}", "X-Forwarded-For": address(8, 0), **json_}
    switches = [("fault_on", "PUT", {"mode": "error", "ttl": 600}, 200), ("fault_off", "DELETE", None, 204),
                ("slow_on", "PUT", {"mode": "slow", "delay_ms": spec["slow_ms"], "ttl": 600}, 200),
                ("slow_peak", "GET", None, 200), ("slow_off", "DELETE", None, 204)]  # fmt: skip
    for event, method, body, ok in switches:
        await load.until(spec.get(event, spec["slow_off"]))  # the peak: read just before the slow fault goes
        r, record = await load.call(conn, "staff", event, method, "/api/ops/faults/search", headers, body)
        answered = r is not None and r.status == ok
        load.events[event] = (json.loads(r.body)["peak"] if event == "slow_peak" else record[2:4]) if answered else None


async def sampler(load: Load) -> None:
    """Read the search breaker's state every 250 ms: [sent, received, detail_state, generation, opened_at]."""
    conn = load.conn()
    for n in range(int(load.spec["end"] * 4) + 1):
        await load.until(n / 4)
        try:
            r, sent, received = await conn.send(encode("GET", "/health/breakers", {}), 2.0)
        except Transport as e:
            load.errors[f"sampler: {e}"] += 1
            continue
        row = next((b for b in json.loads(r.body).get("breakers", []) if b["name"] == "search"), {})
        state = [row.get("detail_state", "?"), row.get("generation", -1), row.get("opened_at")]
        load.samples.append([load.rel(sent), load.rel(received), *state])


async def play(spec: dict[str, Any]) -> dict[str, Any]:
    """Play every actor; return the records and what the run itself cost and missed."""
    load, words = Load(spec), spec["words"]
    users = [{"index": i, "conn": load.conn(), "lock": asyncio.Lock(), "keys": 0} for i in range(len(spec["tokens"]))]
    for user, token in zip(users, spec["tokens"], strict=True):
        user["headers"] = {"Authorization": f"Token {token}", "X-Forwarded-For": address(1, user["index"])}
    crawler = {"X-Forwarded-For": address(9, 0)}
    bot = {"X-Forwarded-For": address(9, 1), "Content-Type": "application/json"}

    def crawl(n: int) -> tuple[Any, ...]:
        q = f"{words[n % len(words)]}+{words[(n * 7 + 3) % len(words)]}"
        return "search", "GET", f"/api/books/search?q={q}&page={n % 5 + 1}", crawler

    def stuff(n: int) -> tuple[Any, ...]:
        body = {"username": f"leaked-user-{n}", "password": f"Summer{2000 + n % 25}!"}
        return "token", "POST", "/api/accounts/token", bot, body

    await load.until(0)
    wall_t0 = time.time() - (time.monotonic() - load.t0)
    spikes = [spike(load, i, at) for i, at in enumerate(spec["spikes"])]
    crawling = fixed_rate(load, "crawler", spec["crawler_rate"], 64, crawl)
    bot_stuffing = fixed_rate(load, "bot", spec["bot_rate"], 32, stuff)
    async with load.group:  # leaving it awaits every request sent: each has a known outcome before the report
        done = await asyncio.gather(crawling, bot_stuffing, legit(load, users), staff(load), sampler(load), *spikes)
    out = {"records": load.records, "samples": load.samples, "events": load.events, "wall_t0": wall_t0}
    out |= {"transport_errors": dict(load.errors), "late": dict(+load.late), "crawler_connections": done[0]}
    return out | {"bot_connections": done[1], "wall_seconds": round(time.monotonic() - load.t0, 3)}


if __name__ == "__main__":
    gc.disable()  # the records hold no cycles: no collector pauses inside the latencies (docs/benchmarks.md.in)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    out = asyncio.run(play(json.load(sys.stdin))) | {"fields": FIELDS, "cpu_seconds": round(time.process_time(), 2)}
    out["generator"] = {"gc": "off", "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
    json.dump(out, sys.stdout, separators=(",", ":"))
