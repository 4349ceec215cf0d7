"""Password hashes run at a low CPU priority and stay plain Django Argon2 hashes."""

from __future__ import annotations

import os
import threading

import pytest
from django.contrib.auth.hashers import Argon2PasswordHasher, check_password, identify_hasher, make_password
from pytest_django.fixtures import Settings

from accounts import hashers

PRODUCTION = ["accounts.hashers.LowPriorityArgon2PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_hashing_runs_on_a_thread_with_lower_cpu_priority_than_the_request() -> None:
    mine = _niceness()

    theirs = hashers.run_at_low_priority(_niceness)

    assert theirs == max(mine, hashers.NICENESS)
    assert _niceness() == mine, "the request's own thread keeps its priority"


def test_errors_inside_the_pool_reach_the_caller() -> None:
    def boom() -> None:
        raise ValueError("bad hash")

    with pytest.raises(ValueError, match="bad hash"):
        hashers.run_at_low_priority(boom)


def test_hashes_are_standard_argon2_that_django_verifies_either_way(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = PRODUCTION

    encoded = make_password("correct-horse-battery")

    assert identify_hasher(encoded).algorithm == "argon2"
    assert ",p=1$" in encoded, "one lane: one low-priority thread per hash"
    assert check_password("correct-horse-battery", encoded)
    assert not check_password("wrong-horse-battery", encoded)
    # Django's own Argon2 hasher reads them: dropping the low-priority wrapper needs no rehash.
    assert Argon2PasswordHasher().verify("correct-horse-battery", encoded)
