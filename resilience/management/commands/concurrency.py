"""Inspect concurrency policies (bulkheads) from a shell, or give back their slots.

    manage.py concurrency status [POLICY] [--json]
    manage.py concurrency reset POLICY|--all

A reset frees every slot and queue place of the policy in Redis: requests still running are then
not counted until they finish (use it when slots are held by something that will never give them
back sooner than their lease).
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError, CommandParser

from resilience import services
from resilience.engine.limiter import StoreUnavailable
from resilience.management.base import OperatorCommand
from resilience.models import ConcurrencyPolicy


class Command(OperatorCommand):
    help = "Show concurrency policies with the slots held now, or give back their slots."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "reset"])
        parser.add_argument("policy", nargs="?", help="policy name (default: all for status)")
        parser.add_argument("--all", action="store_true", help="with reset: every policy")
        parser.add_argument("--json", action="store_true", help="with status: JSON output")

    def handle(self, *args: object, action: str, policy: str | None, **options: object) -> str:
        policies = ConcurrencyPolicy.objects.all()
        if policy:
            policies = policies.filter(name=policy)
            if not policies.exists():
                raise CommandError(f"No concurrency policy named {policy!r}.")
        elif action == "reset" and not options["all"]:
            raise CommandError("Name a policy, or pass --all.")
        try:
            if action == "reset":
                return f"{services.concurrency_reset(policies=policies)} policy(ies): slots given back"
            rows = services.concurrency_status(policies=policies)
        except StoreUnavailable as e:
            raise CommandError(f"The shared slot store is unreachable: {e}") from e
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return ""
        for row in rows:
            state = "" if row["enabled"] else " (disabled)"
            held = (
                "unknown (in process)" if row["store"] == "process" else f"{row['in_flight']} of {row['max_in_flight']}"
            )
            self.stdout.write(f"{row['name']:24} {row['mode']:8} in flight {held}, waiting {row['waiting']}{state}")
            for key in row["keys"]:  # type: ignore[attr-defined]  # a list of dicts
                self.stdout.write(f"    {key['key']:40} in flight {key['in_flight']}, waiting {key['waiting']}")
        return f"{len(rows)} concurrency policy(ies)"
