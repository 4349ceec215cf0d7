"""Every Redis key and channel of the resilience layer, and the hash-tag rule they follow.

On a Redis Cluster a key lives in the slot of its hash tag (the text between its first "{" and
the next "}"), and one script may only touch keys of one slot. So each key names what must share
a slot with it in its tag: one limit key per (policy, counted value), one breaker's state and
window, one bulkhead's slots, queue and deadlines, one policy's minutes of limited keys. Keys that
no script combines with others (the version counter, the workers hash, the per-minute counts)
carry no tag and spread by name. The prefix (RESILIENCE_KEY_PREFIX) must hold no brace: it would
become every key's tag (settings refuse one). docs/resilience.md, "Redis Cluster", has the table.
"""

from __future__ import annotations

import binascii


# --- rate limits -----------------------------------------------------------------------------
def limit_key(prefix: str, policy_id: int, epoch: int, value: str) -> str:
    """Return the state key of one counted value of a rate-limit policy: ``rl:{<id>.<epoch>:<value>}``."""
    return f"{prefix}rl:{{{policy_id}.{epoch}:{value}}}"


def counted_value(key: str) -> str:
    """Return what a limit key counts by: what follows the policy part of "...rl:{<id>.<epoch>:<value>}"."""
    return key[key.index(":", key.index("{")) + 1 : -1]


def version_key(prefix: str) -> str:
    """Return the policy-version counter every admission reads (no tag: read on its own on a cluster)."""
    return f"{prefix}resilience:policy-version"


def events_channel(prefix: str) -> str:
    """Return the channel of breaker resets, forced states, limit resets and policy changes."""
    return f"{prefix}cb:events"


# --- dashboard statistics --------------------------------------------------------------------
def stats_key(prefix: str, minute: int) -> str:
    """Return the hash of one minute's "<label>:<outcome>" counters."""
    return f"{prefix}stats:{minute}"


def top_key(prefix: str, minute: int, label: str) -> str:
    """Return the sorted set of one policy's limited values in one minute (tagged by the policy's label)."""
    return f"{prefix}top:{{{label}}}:{minute}"


def top_sum_key(prefix: str, label: str, nonce: str) -> str:
    """Return a scratch key in the slot of ``label``'s top keys, where the dashboard sums them."""
    return f"{prefix}top-sum:{{{label}}}:{nonce}"


# --- breakers ----------------------------------------------------------------------------------
def breaker_prefix(prefix: str) -> str:
    return f"{prefix}cb:"


def breaker_keys(breaker_prefix: str, name: str) -> list[str]:
    """Return the state hash and the window key of breaker ``name``: ``cb:{<name>}`` and ``cb:{<name>}:w``."""
    key = f"{breaker_prefix}{{{name}}}"
    return [key, f"{key}:w"]


# --- bulkheads ---------------------------------------------------------------------------------
def slots_base(prefix: str, policy_id: int, value: str) -> str:
    """Return the stem of one counted value of a concurrency policy: ``cc:{<id>:<value>}``."""
    return f"{prefix}cc:{{{policy_id}:{value}}}"


def slots_counted_value(base: str) -> str:
    """Return what a slots base counts by: what follows the policy id in "...cc:{<id>:<value>}"."""
    inner = base[base.rindex("cc:{") + 4 : -1]
    return inner.split(":", 1)[1]


def slot_keys(base: str) -> list[str]:
    """Return the slots, queue and deadline keys of one (policy, value): one hash tag, one cluster slot."""
    return [f"{base}:s", f"{base}:q", f"{base}:d"]


def adaptive_key(prefix: str, policy_id: int) -> str:
    """Return the hash of a concurrency policy's adaptive limit (one per policy, whatever it counts by)."""
    return f"{prefix}cc-limit:{{{policy_id}}}"


def slots_pattern(prefix: str, policy_id: int) -> str:
    """Return the SCAN pattern of every slot set of a concurrency policy."""
    return f"{prefix}cc:{{{policy_id}:*}}:s"


def slots_stem(prefix: str, policy_id: int) -> str:
    """Return what every in-process slot key of a concurrency policy starts with."""
    return f"{prefix}cc:{{{policy_id}:"


# --- stale copies, workers, policy errors -------------------------------------------------------
def stale_vary_key(prefix: str, rule: str, digest: str) -> str:
    """Return the key of the headers a URL's stale copies are keyed by."""
    return f"{prefix}stale:{{{rule}}}:vary:{digest}"


def stale_copy_key(prefix: str, rule: str, digest: str) -> str:
    """Return the key of one stale copy of a URL variant."""
    return f"{prefix}stale:{{{rule}}}:{digest}"


def health_probe_key(prefix: str) -> str:
    """Return the key /health/ready runs the admission script on (a dry-run limit no probe rate reaches)."""
    return f"{prefix}health:{{ready}}"


def workers_key(prefix: str) -> str:
    """Return the hash where each worker reports the policy version it serves under."""
    return f"{prefix}workers"


def errors_key(prefix: str) -> str:
    """Return the hash of the latest error per policy: "<kind>:<name>" -> JSON {stage, reason, at}."""
    return f"{prefix}policy-errors"


# --- cluster slots -------------------------------------------------------------------------------
CLUSTER_SLOTS = 16384


def hash_tag(key: str) -> str:
    """Return the part of ``key`` Redis Cluster hashes: its tag if it has a non-empty one, else all of it."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    """Return the cluster slot of ``key`` (CRC16/XMODEM of its hash tag, modulo 16384), as Redis computes it."""
    return binascii.crc_hqx(hash_tag(key).encode(), 0) % CLUSTER_SLOTS
