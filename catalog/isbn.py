"""ISBN parsing: ISBN-13 is canonical; ISBN-10 input is accepted and converted."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\s-]")
_DIGITS = "0123456789"


class InvalidIsbn(ValueError):
    """The text is not a valid ISBN-10 or ISBN-13."""


def _isbn13_check_digit(first12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)


def _isbn10_valid(isbn: str) -> bool:
    total = 0
    for i, ch in enumerate(isbn):
        # Only ASCII digits: str.isdigit() also accepts "²" (int() refuses it) and other scripts.
        value = 10 if (ch in "Xx" and i == 9) else int(ch) if ch in _DIGITS else -1
        if value < 0:
            return False
        total += value * (10 - i)
    return total % 11 == 0


def normalize_isbn(text: str) -> str:
    """Return the ISBN-13 for an ISBN-10 or ISBN-13 (hyphens and spaces allowed); raise InvalidIsbn."""
    raw = _SEPARATORS.sub("", str(text or ""))
    if len(raw) == 10:
        if not _isbn10_valid(raw):
            raise InvalidIsbn("Invalid ISBN-10 check digit.")
        body = "978" + raw[:9]
        return body + _isbn13_check_digit(body)
    if len(raw) == 13 and raw.isascii() and raw.isdigit():
        if not raw.startswith(("978", "979")):
            raise InvalidIsbn("An ISBN-13 starts with 978 or 979.")
        if _isbn13_check_digit(raw[:12]) != raw[12]:
            raise InvalidIsbn("Invalid ISBN-13 check digit.")
        return raw
    raise InvalidIsbn("An ISBN has 10 or 13 digits.")
