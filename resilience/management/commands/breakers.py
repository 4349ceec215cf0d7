"""Operate circuit breakers from a shell; every worker of every instance sees the change at once.

manage.py breakers status [--json]
manage.py breakers reset NAME | --all      close, counters cleared
manage.py breakers open NAME               hold open until released
manage.py breakers close NAME              hold closed until released
manage.py breakers release NAME            end a forced state (back to closed)
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError, CommandParser

from resilience import services
from resilience.engine.breaker import State, StoreUnavailable
from resilience.management.base import OperatorCommand
from resilience.models import CircuitBreakerPolicy


class Command(OperatorCommand):
    help = "Show, reset, force open, force close or release circuit breakers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "reset", "open", "close", "release"])
        parser.add_argument("name", nargs="?", help="breaker policy name")
        parser.add_argument("--all", action="store_true", help="with reset: every breaker")
        parser.add_argument("--json", action="store_true", help="with status: JSON output")

    def handle(self, *args: object, action: str, name: str | None, **options: object) -> str:
        try:
            return self._handle(action, name, options)
        except StoreUnavailable as e:
            raise CommandError(f"The shared breaker store is unreachable: {e}") from e

    def _handle(self, action: str, name: str | None, options: dict[str, object]) -> str:
        if action == "status":
            policies = CircuitBreakerPolicy.objects.all()
            if name:
                policies = policies.filter(name=name)
            rows = services.breaker_status(policies=policies)
            if options["json"]:
                self.stdout.write(json.dumps(rows, indent=2))
                return ""
            for row in rows:
                # The summary, as the admin shows it: "open, half-open in 12 s", or "forced open: held
                # until an operator releases it" (a forced state has no time to half-open).
                self.stdout.write(
                    f"{row['name']:24} {row['summary']:50} failures={row['consecutive_failures']} "
                    f"window={row['window_failures']}/{row['window_calls']}"
                )
            return f"{len(rows)} breaker(s)"
        if name:
            if not CircuitBreakerPolicy.objects.filter(name=name).exists():
                raise CommandError(f"No circuit-breaker policy named {name!r}.")
            names = [name]
        elif action == "reset" and options["all"]:
            names = list(CircuitBreakerPolicy.objects.values_list("name", flat=True))
        else:
            raise CommandError("Name a breaker" + (", or pass --all." if action == "reset" else "."))
        if action == "reset":
            n = services.breaker_reset(names=names)
            return f"reset {n} breaker(s)"
        state = {"open": State.FORCED_OPEN, "close": State.FORCED_CLOSED, "release": None}[action]
        n = services.breaker_force(names=names, state=state)
        return f"{action}: {', '.join(names)} ({n} breaker(s))"
