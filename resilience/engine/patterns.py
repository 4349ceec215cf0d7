"""Path patterns staff type, compiled for a linear-time engine (RE2), and the longest path they run on.

A policy's regular expression runs on every request path, which the client chooses. Python's
``re`` backtracks: ``^/api/(a+)+$`` against 37 crafted bytes takes longer than a worker's timeout.
RE2 (the ``google-re2`` package) matches in time linear in the path, like Envoy's ``safe_regex``,
and refuses what it cannot do in linear time: backreferences (``\\1``), lookaround (``(?=``,
``(?<!``), atomic groups and possessive quantifiers, ``\\Z``. It still costs path length times
program size, so both are capped: a program larger than MAX_PROGRAM_SIZE is refused when saved, and a
path longer than MAX_MATCH_PATH is never handed to a pattern at all. Such a path counts as matching
every regex policy: padding a path can only add limits and breakers to a request, never escape one.
"""

from __future__ import annotations

from typing import Any

import re2

# Longest path (in characters) a pattern is run on. Real routes are far shorter; gunicorn refuses
# request lines over 4094 bytes, other servers may not.
MAX_MATCH_PATH = 2_048
# Largest compiled program accepted (RE2 instructions): a match costs up to path length times this,
# so the worst pattern on the longest path stays near a millisecond. "^/api/books/\d+$" is 6;
# "\p{L}+" (every Unicode letter) is about 1,200.
MAX_PROGRAM_SIZE = 2_000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported to staff, not printed on stderr


class PatternError(ValueError):
    """A pattern RE2 cannot compile, or one too large to run on every request."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"{reason} (in {pattern!r})")
        self.pattern = pattern
        self.reason = reason


def compile_pattern(pattern: str) -> Any:
    """Return the RE2 program of ``pattern``; raise PatternError naming why it cannot be used."""
    try:
        program = re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PatternError(pattern, f"RE2 refuses this regular expression: {reason}") from None
    if program.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(
            pattern,
            f"this regular expression is too large to run on every request "
            f"({program.programsize} > {MAX_PROGRAM_SIZE} RE2 steps)",
        )
    return program


def path_matches(program: Any, path: str) -> bool:
    """Return True if ``program`` matches at the start of ``path``; a path over MAX_MATCH_PATH always matches."""
    if len(path) > MAX_MATCH_PATH:
        return True
    return program.match(path) is not None
