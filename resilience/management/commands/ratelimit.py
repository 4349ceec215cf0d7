"""Inspect and reset rate limits from a shell; every worker sees a reset at once.

    manage.py ratelimit status [POLICY] [--key KEY]
    manage.py ratelimit reset POLICY|--all [--key KEY]

A reset without --key starts every counter of the policy afresh; with --key only that client's.
"""

from __future__ import annotations

from django.core.management.base import CommandError, CommandParser

from resilience import services
from resilience.management.base import OperatorCommand
from resilience.models import RateLimitPolicy
from resilience.runtime import POLICY_BACKSTOP_SECONDS


class Command(OperatorCommand):
    help = "Show rate-limit policies and usage, or reset their counters."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "reset"])
        parser.add_argument("policy", nargs="?", help="policy name (default: all for status)")
        parser.add_argument("--key", help="one client: an IP, a user id, or a header value")
        parser.add_argument("--all", action="store_true", help="with reset: every policy")

    def handle(self, *args: object, action: str, policy: str | None, key: str | None, **options: object) -> str:
        policies = RateLimitPolicy.objects.all()
        if policy:
            policies = policies.filter(name=policy)
            if not policies.exists():
                raise CommandError(f"No rate-limit policy named {policy!r}.")
        elif action == "reset" and not options["all"]:
            raise CommandError("Name a policy, or pass --all.")
        if action == "reset":
            with services.propagation_report() as report:
                n = services.policy_reset(policies=policies, key=key)
            if report.failed:
                # The counters are reset in PostgreSQL (new epoch), but no worker heard it at once.
                self.stderr.write(
                    self.style.WARNING(
                        f"Warning: the workers could not be told at once (Redis: {report.errors[-1]}); "
                        f"each finds the reset in PostgreSQL within {POLICY_BACKSTOP_SECONDS} s."
                    )
                )
            return f"reset {'key ' + key + ' of ' if key else ''}{n} policy(ies)"
        for p in policies:
            line = (
                f"{p.name:24} {'on ' if p.enabled else 'off'} {p.mode:8} {p.limit}/{p.period}s "
                f"{p.algorithm:15} key={p.key}{':' + p.header_name if p.header_name else ''} "
                f"{p.methods or 'ANY'} {p.match_type}:{p.pattern}"
            )
            if key or p.key == RateLimitPolicy.Key.GLOBAL:
                d = services.policy_usage(policy=p, key=key or "all") if p.enabled else None
                line += f"  usage: {d.limit - d.remaining}/{d.limit}, reset in {d.reset_after:.1f}s" if d else ""
            self.stdout.write(line)
        return f"{policies.count()} policy(ies)"
