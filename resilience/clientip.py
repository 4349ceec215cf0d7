"""The client address a limit is keyed by, as far as the configured proxies can be trusted."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.http import HttpRequest


def client_ip(request: HttpRequest, trusted_proxies: int) -> str:
    """Return the client's address: REMOTE_ADDR, or X-Forwarded-For through trusted proxies only.

    Each trusted proxy appends the address it received the request from, so with N trusted
    proxies the Nth entry from the right is the first one a client could not have forged.
    Entries further left are the client's own claims and are ignored.
    """
    remote = request.META.get("REMOTE_ADDR", "") or ""
    if trusted_proxies <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if not forwarded:
        return remote
    return forwarded[-trusted_proxies] if len(forwarded) >= trusted_proxies else forwarded[0]


@lru_cache(maxsize=8192)
def ip_key(address: str, ipv6_prefix: int = 64) -> str:
    """Return the limit key for an address: IPv4 as is, IPv6 by its network (one /64 is one client)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "invalid"  # a garbled address still gets counted, in one shared bucket
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)
