"""A password hasher that counts its work: the tests' fast MD5 hasher, plus a tally of every hash."""

from __future__ import annotations

import itertools

from django.contrib.auth.hashers import MD5PasswordHasher
from django.utils.crypto import constant_time_compare

_hashes = itertools.count()
_last = 0


class CountingMD5PasswordHasher(MD5PasswordHasher):
    """MD5 (as the test settings hash), counting each encode and verify: what a real hasher would pay for."""

    def encode(self, password: str, salt: str) -> str:
        _tick()
        return super().encode(password, salt)

    def verify(self, password: str, encoded: str) -> bool:
        _tick()
        # MD5's verify encodes the password again: that is the same one hash, not a second.
        algorithm, salt, _ = encoded.split("$", 2)
        return constant_time_compare(encoded, MD5PasswordHasher.encode(self, password, salt))


def _tick() -> None:
    global _last
    _last = next(_hashes) + 1


def hashes() -> int:
    """Return how many passwords were hashed so far in this process."""
    return _last


HASHER = f"{__name__}.CountingMD5PasswordHasher"
