"""What an API token looks like, so malformed ones cost no query (no Django imports: the limiter uses it too)."""

from __future__ import annotations

import re

# knox issues 64 hex characters; tokens carried over from DRF's table (migration 0002) have 40.
_TOKEN = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")
# knox finds a token's row by its first characters (knox.settings.CONSTANTS.TOKEN_KEY_LENGTH).
TOKEN_KEY_LENGTH = 15


def is_token_shaped(value: str) -> bool:
    """Return True if value could be one of our API tokens."""
    return _TOKEN.fullmatch(value) is not None
