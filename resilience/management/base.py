"""What the resilience commands share."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class OperatorCommand(BaseCommand):
    """A command whose options may come before or after its positional arguments.

    argparse alone stops filling an optional positional at the first option, so
    `breakers status --json search` would refuse "search"; operators type both orders.
    """

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]  # the point of this class
        return parser
