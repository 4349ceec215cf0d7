"""The client a request comes from, as far as the configured proxies can be trusted.

The contract in full: docs/resilience.md#client-addresses-behind-proxies.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import NamedTuple

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The headers a proxy may report the client in (TRUSTED_PROXY_HEADER), by their META names.
HEADERS = {"x-forwarded-for": "HTTP_X_FORWARDED_FOR", "forwarded": "HTTP_FORWARDED"}

# RFC 7239 obfnode / obfport: "_" then letters, digits, ".", "_", "-". Bounded here: it may become
# part of a Redis key.
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]{1,63}")
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]{1,63}")
# Longer than any address with zone and port: not worth parsing.
_MAX_NODE = 128

# One element of a Forwarded header (up to a comma outside quoted strings), one pair of an element
# (up to a semicolon): runs of quoted strings and other characters. Possessive, so a failed match
# never backtracks; a quote that does not close stops the match there.
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_ELEMENT = re.compile(rf'(?:{_QUOTED}|[^",]++)*+')
_PAIR = re.compile(rf'(?:{_QUOTED}|[^";]++)*+')
_ESCAPED = re.compile(r"\\(.)")


def _address(text: str, *, version: int | None = None) -> str | None:
    """Return text as a canonical IP address (IPv4-mapped IPv6 as IPv4, zone dropped), or None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0] if "%" in text else text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if version is not None and ip.version != version:
        return None
    return str(ip)


@lru_cache(maxsize=8192)
def parse_node(node: str) -> str | None:
    """Return the address one forwarded entry names (port and brackets dropped), or None.

    Accepts an IPv4 address with or without a port, a bracketed IPv6 address with or without a
    port, a bare IPv6 address, and an obfuscated identifier (returned as is, with any port
    dropped). ``unknown`` and anything unparseable give None.
    """
    node = node.strip()
    if not node or len(node) > _MAX_NODE:
        return None
    if node.startswith("["):
        host, bracket, rest = node[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
        return _address(host, version=6)
    if node.count(":") == 1:  # an IPv4 address or an obfuscated identifier, with a port
        host, _, port = node.partition(":")
        if not _PORT.fullmatch(port):
            return None
        return host if _OBFUSCATED.fullmatch(host) else _address(host, version=4)
    if _OBFUSCATED.fullmatch(node):
        return node
    return _address(node)  # IPv4, or IPv6 without brackets (two colons or more)


def is_obfuscated(node: str) -> bool:
    """Return True if a parsed node is an obfuscated identifier rather than an address."""
    return node.startswith("_")


def _split(value: str, piece: re.Pattern[str], separator: str) -> tuple[list[str], bool]:
    """Split value on separator outside quoted strings; say whether a quote was left open.

    One regex match per piece: a header of a thousand elements costs a thousand C-speed matches
    (gunicorn caps a header line at 8 KB).
    """
    if '"' not in value:
        return value.split(separator), False
    pieces: list[str] = []
    position, end = 0, len(value)
    while True:
        match = piece.match(value, position)
        pieces.append(match.group())  # type: ignore[union-attr]  # matches the empty string too
        position = match.end()  # type: ignore[union-attr]  # likewise
        if position >= end:
            return pieces, False
        if value[position] != separator:
            # A quote that never closes: the rest cannot be split reliably, so it is one garbled piece.
            pieces[-1] += value[position:]
            return pieces, True
        position += 1


def _for_parameter(element: str) -> str | None:
    """Return the unquoted ``for`` value of one Forwarded element, or None if it has none or is garbled."""
    found: str | None = None
    pairs, _ = _split(element, _PAIR, ";")
    for pair in pairs:
        if not pair.strip():
            continue
        name, equals, value = pair.partition("=")
        if not equals:
            return None
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                return None
            value = _ESCAPED.sub(r"\1", value[1:-1])
        elif '"' in value:
            return None
        if name.strip().lower() == "for":
            if found is not None:
                return None  # RFC 7239: a parameter occurs at most once per element
            found = value
    return found


def _tail(pieces: list[str], last: int | None) -> list[str]:
    """Return the non-blank pieces, only the last ``last`` of them if given (the rest is never read)."""
    if last is None:
        return [piece for piece in pieces if piece.strip()]
    kept: list[str] = []
    for piece in reversed(pieces):
        if piece.strip():
            kept.append(piece)
            if len(kept) == last:
                break
    kept.reverse()
    return kept


def forwarded_for(value: str, last: int | None = None) -> list[str | None]:
    """Return the ``for`` value of each element of a Forwarded header (of the last ``last``), leftmost first.

    A garbled element, or one without ``for``, is None. A quote that never closes makes the rest
    of the header one garbled element: no client can smuggle text into a proxy's element.
    """
    elements, left_open = _split(value, _ELEMENT, ",")
    if left_open:
        elements.pop()
    found: list[str | None] = [_for_parameter(element) for element in _tail(elements, last)]
    if left_open:
        found.append(None)  # the garbled rest is one element, however blank it looks
    return found[-last:] if last is not None else found


def x_forwarded_for(value: str, last: int | None = None) -> list[str | None]:
    """Return the entries of an X-Forwarded-For header (the last ``last``), leftmost first."""
    return [piece.strip() for piece in _tail(value.split(","), last)]


class Reported(NamedTuple):
    """What the trusted proxies say about a request's client."""

    client: str | None  # what the outermost trusted proxy reports: an address, an obfuscated id, or None
    via: str  # the nearest hop with a usable address: the proxy that reported the client, or REMOTE_ADDR


def reported(
    remote_addr: str, header_value: str | None, *, trusted_proxies: int, header: str = "x-forwarded-for"
) -> Reported:
    """Return the client the outermost of trusted_proxies reports, and the hop that forwarded it."""
    remote = parse_node(remote_addr) or remote_addr
    if trusted_proxies <= 0 or not header_value:
        return Reported(parse_node(remote_addr), remote)
    read = forwarded_for if header == "forwarded" else x_forwarded_for
    entries = read(header_value, last=trusted_proxies)  # entries further left are never read
    if not entries:
        return Reported(parse_node(remote_addr), remote)
    # With fewer entries than proxies, the leftmost was still written by a trusted proxy.
    trusted = entries[-trusted_proxies:]
    client = parse_node(trusted[0]) if trusted[0] is not None else None
    via = remote
    for entry in reversed(trusted[1:]):
        hop = parse_node(entry) if entry is not None else None
        if hop is None or is_obfuscated(hop):
            break  # a hop we cannot name: the nearest one we can stays
        via = hop
    return Reported(client, via)


def _reported(request: HttpRequest) -> Reported:
    header = settings.TRUSTED_PROXY_HEADER
    return reported(
        request.META.get("REMOTE_ADDR", "") or "",
        request.META.get(HEADERS[header]),
        trusted_proxies=settings.TRUSTED_PROXY_COUNT,
        header=header,
    )


def client_ip(request: HttpRequest) -> str:
    """Return who per-client limits count this request as: its address, or the proxy that forwarded it."""
    client, via = _reported(request)
    if client is None:
        return via
    if is_obfuscated(client) and settings.TRUSTED_PROXY_OBFUSCATED_IDS != "per-client":
        return via
    return client


def client_address(request: HttpRequest) -> Address | None:
    """Return the client's IP address as the trusted proxies report it, or None when they do not name one."""
    client = _reported(request).client
    if client is None or is_obfuscated(client):
        return None
    return ipaddress.ip_address(client)


@lru_cache(maxsize=8192)
def ip_key(address: str, ipv6_prefix: int = 64) -> str:
    """Return the limit key for an address: IPv4 as is, IPv6 by its network (one /64 is one client).

    Ports and brackets are dropped; an obfuscated identifier is its own key.
    """
    node = parse_node(address)
    if node is None:
        return "invalid"  # REMOTE_ADDR itself garbled (never from a TCP peer): one shared bucket
    if is_obfuscated(node):
        return node
    ip = ipaddress.ip_address(node)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return node
