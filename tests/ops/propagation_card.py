"""How the dashboard's propagation card reads after a policy save, on two real gunicorn workers.

    DB=bookstore_NAME_card .venv/bin/python -m tests.ops.propagation_card

It makes (and drops) database DB, starts gunicorn with 2 workers on a free loopback port and, per
trial: lets both workers serve requests, saves a policy (committed and signalled, as the admin
does), then for WINDOW seconds (30) sends one API request every 3 s, which is what an open
dashboard's refresh adds, and reads the card every 0.2 s as the dashboard computes it. It prints
how long the card raised an alarm (a worker "behind"), and when the first worker confirmed the
change. TRIALS (3) sets the number of saves. Loopback only; every process it starts is stopped.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

DB = os.environ.get("DB", "bookstore_propagation_card")
WINDOW = float(os.environ.get("WINDOW", "30"))
TRIALS = int(os.environ.get("TRIALS", "3"))
REFRESH_SECONDS = 3.0  # the dashboard's refresh interval: one request to some worker each time
SAMPLE_SECONDS = 0.2
ADMIN_DSN = "postgres://postgres@127.0.0.1:5432/postgres"


def setup() -> None:
    """Configure Django on a fresh database DB and migrate it (the default policies included)."""
    import psycopg

    os.environ.update(
        DJANGO_SETTINGS_MODULE="bookstore.settings",
        DEBUG="true",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB}",
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        RESILIENCE_KEY_PREFIX=f"card-{os.getpid()}:",  # keys of its own in a shared Redis
        LOG_LEVEL="ERROR",
    )
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}"')
        conn.execute(f'CREATE DATABASE "{DB}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def teardown() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def trial(port: int, enable: bool) -> tuple[float, float | None, dict[str, Any]]:
    """Save once; return the seconds the card alarmed, when a worker first confirmed, and the last card."""
    from resilience import services
    from resilience.models import RateLimitPolicy
    from resilience.ops import dashboard
    from tests.live import request

    for _ in range(6):  # both workers serve requests, and report
        request(port, "/api/books")
    services.policy_update(policies=RateLimitPolicy.objects.filter(name="orders-ip"), enabled=enable)
    saved = time.monotonic()
    alarmed, confirmed_after = 0.0, None
    next_request = saved
    card, read_at = dashboard._workers(time.time()), saved
    while (now := time.monotonic()) - saved < WINDOW:
        if now >= next_request:
            request(port, "/api/books")
            next_request += REFRESH_SECONDS
        if card["behind"]:
            alarmed += now - read_at
        card, read_at = dashboard._workers(time.time()), time.monotonic()
        if confirmed_after is None and card["confirmed"]:
            confirmed_after = read_at - saved
        time.sleep(SAMPLE_SECONDS)
    return alarmed, confirmed_after, card


def main() -> int:
    sys.path.insert(0, os.getcwd())
    setup()
    from tests.live import LiveServer

    server = LiveServer(workers=2).start()
    try:
        for n in range(TRIALS):
            alarmed, confirmed_after, card = trial(server.port, enable=n % 2 == 1)
            states = {w["worker"]: w["state"] for w in card["workers"]}
            first = "never" if confirmed_after is None else f"{confirmed_after:.2f} s"
            print(f"save {n + 1}: alarm {alarmed:.1f} s of {WINDOW:.0f} s; first confirmed after {first}; {states}")
    finally:
        server.stop()
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
