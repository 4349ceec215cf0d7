"""Reads on accounts."""

from __future__ import annotations

from accounts.models import User
from accounts.usernames import skeleton


def user_lookalike_exists(*, username: str, exclude_pk: int | None = None) -> bool:
    """Return True if another user's name looks like this one (same TR39 skeleton).

    The same name in another case is left to the duplicate check, which answers it as a conflict.
    """
    lookalikes = User.objects.filter(username_skeleton=skeleton(username)).exclude(username__iexact=username)
    if exclude_pk is not None:
        lookalikes = lookalikes.exclude(pk=exclude_pk)
    return lookalikes.exists()
