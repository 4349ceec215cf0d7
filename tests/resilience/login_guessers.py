"""Guess a password at the admin's sign-in with several threads, in a process of its own.

    python -m tests.resilience.login_guessers URL GUESSERS USERNAME

Prints "refused" as soon as a guess is refused, then keeps guessing until its stdin is closed, and
prints, as JSON, the count of each answer's status and the median seconds each took. A process of
its own, so the guessers' client work does not compete for the GIL with the test that measures the
shop meanwhile. Each guess comes from a new address (X-Forwarded-For: the server trusts one
proxy), so only a per-account limit can stop them.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import threading
import time

import requests

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Guessers:
    def __init__(self, url: str, username: str) -> None:
        self.url = url
        self.username = username
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: dict[int, list[float]] = {}

    def guess(self, n: int) -> None:
        session = requests.Session()
        page = session.get(f"{self.url}/admin/login/", timeout=60)
        token = _CSRF.search(page.text)
        if token is None:
            raise SystemExit(f"no CSRF token in the sign-in page: {page.status_code}")
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            began = time.perf_counter()
            reply = session.post(
                f"{self.url}/admin/login/",
                data={"csrfmiddlewaretoken": token.group(1), "username": self.username, "password": f"g{n}-{attempt}"},
                headers={"X-Forwarded-For": f"198.51.{n}.{attempt % 250 + 1}"},
                allow_redirects=False,
                timeout=120,
            )
            with self.lock:
                first_refusal = reply.status_code == 429 and 429 not in self.seen
                self.seen.setdefault(reply.status_code, []).append(time.perf_counter() - began)
            if first_refusal:
                print("refused", flush=True)  # noqa: T201 - read by the test

    def result(self) -> dict[int, dict[str, float]]:
        with self.lock:
            return {status: {"count": len(t), "median": statistics.median(t)} for status, t in self.seen.items()}


def main(url: str, guessers: str, username: str) -> None:
    run = Guessers(url, username)
    threads = [threading.Thread(target=run.guess, args=(n,)) for n in range(int(guessers))]
    for thread in threads:
        thread.start()
    sys.stdin.read()  # until the test closes it
    run.stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps(run.result()), flush=True)  # noqa: T201 - the result, read by the test


if __name__ == "__main__":
    main(*sys.argv[1:])
