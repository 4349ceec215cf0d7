"""The client address behind trusted proxies: every form a proxy writes, and what a client cannot forge."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory
from pytest_django.fixtures import Settings

from bookstore.env import env_choice
from resilience.http.clientip import (
    Reported,
    client_address,
    client_ip,
    forwarded_for,
    ip_key,
    parse_node,
    reported,
    x_forwarded_for,
)

PROXY = "10.0.0.1"


@pytest.mark.parametrize(
    ("node", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("  203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:5123", "203.0.113.7"),
        ("203.0.113.7:0", "203.0.113.7"),
        ("203.0.113.7:_obfport", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:_p1", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::1", "::1"),
        ("[::1]:8080", "::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]:80", "fe80::1"),
        ("_hidden", "_hidden"),
        ("_SEVKISEK", "_SEVKISEK"),
        ("_gazonk:4711", "_gazonk"),
        ("_a.b-c_d:_port", "_a.b-c_d"),
    ],
)
def test_parse_node_reads_every_form_proxies_write(node: str, address: str) -> None:
    assert parse_node(node) == address


@pytest.mark.parametrize(
    "node",
    [
        "",
        "   ",
        "unknown",
        "UNKNOWN",
        "garbage",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "010.1.1.1",  # leading zeros: octal to some parsers, decimal to others
        "1.2.3.4:",
        "1.2.3.4:123456",
        "1.2.3.4:80:80",
        "1.2.3.4:port",
        "1.2.3.4 5.6.7.8",
        "[1.2.3.4]",
        "[1.2.3.4]:80",
        "[2001:db8::1",
        "[2001:db8::1]443",
        "[2001:db8::1]:",
        "[2001:db8::1]:http",
        "[garbage]:80",
        "2001:db8::1::2",
        "_",
        "_" + "a" * 64,
        "_a b",
        "_a/b",
        "_ä",
        "x" * 200,
        '"1.2.3.4"',
    ],
)
def test_parse_node_refuses_what_is_not_an_address(node: str) -> None:
    assert parse_node(node) is None


def test_a_bare_ipv6_address_with_a_port_stays_in_its_network() -> None:
    # Without brackets a port cannot be told from the last group; it lands in the same /64 anyway.
    assert ip_key("2001:db8::1:443") == ip_key("2001:db8::1") == "2001:db8::/64"


@pytest.mark.parametrize(
    ("header", "entries"),
    [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", ["192.0.2.60"]),
        ('for="_gazonk"', ["_gazonk"]),
        ('For="[2001:db8:cafe::17]:4711"', ["[2001:db8:cafe::17]:4711"]),
        ('for="192.0.2.43:47011"', ["192.0.2.43:47011"]),
        ("for=192.0.2.43, for=198.51.100.17", ["192.0.2.43", "198.51.100.17"]),
        ('for=192.0.2.43,for="[2001:db8::1]"', ["192.0.2.43", "[2001:db8::1]"]),
        ("for=unknown", ["unknown"]),
        ("for=_hidden, for=_SEVKISEK", ["_hidden", "_SEVKISEK"]),
        ("by=203.0.113.43; proto=https; for=192.0.2.60", ["192.0.2.60"]),
        ('for="1.2.3.4;by=x"', ["1.2.3.4;by=x"]),
        ('for="1.2.3.4, 5.6.7.8"', ["1.2.3.4, 5.6.7.8"]),
        (r'for="\"1.2.3.4\""', ['"1.2.3.4"']),
        (r'for="[2001:db8::1]\:80"', ["[2001:db8::1]:80"]),
        ("for=1.1.1.1,, ,for=2.2.2.2,", ["1.1.1.1", "2.2.2.2"]),
        ("proto=https", [None]),
        ("for=1.1.1.1;for=2.2.2.2", [None]),
        ("for", [None]),
        ("garbage, for=5.6.7.8", [None, "5.6.7.8"]),
        ('for="1.2.3.4, for=5.6.7.8', [None]),
        ('for=1.2.3.4"x', [None]),
        # A client's unclosed quote swallows what follows it: never a proxy's element in its place.
        ('for="x", for=9.9.9.9;by=", for=5.6.7.8', ["x", None]),
    ],
)
def test_forwarded_for_reads_each_elements_for_parameter(header: str, entries: list[str | None]) -> None:
    assert forwarded_for(header) == entries


def test_only_the_entries_trusted_proxies_wrote_are_read() -> None:
    assert forwarded_for("garbage, " * 500 + "for=6.6.6.6, for=1.1.1.1,, ", last=1) == ["1.1.1.1"]
    assert forwarded_for('for="x", for=9.9.9.9;by=", for=5.6.7.8', last=2) == ["x", None]
    assert forwarded_for("for=1.1.1.1", last=3) == ["1.1.1.1"]
    assert x_forwarded_for("9.9.9.9, " * 500 + "1.1.1.1, 2.2.2.2 , ,", last=2) == ["1.1.1.1", "2.2.2.2"]


def test_x_forwarded_for_splits_on_commas_and_drops_empty_entries() -> None:
    assert x_forwarded_for(" 1.1.1.1 ,, 10.6.6.1:5123 , [2001:db8::1]:443, ") == [
        "1.1.1.1",
        "10.6.6.1:5123",
        "[2001:db8::1]:443",
    ]


@pytest.mark.parametrize(
    ("header_value", "trusted", "expected"),
    [
        # No trusted proxies: the header is the client's word and is never read.
        ("127.0.0.1", 0, Reported(PROXY, PROXY)),
        # The last entry is what our proxy saw; the entries left of it are forgeable.
        ("1.1.1.1, 10.6.6.1:5123", 1, Reported("10.6.6.1", PROXY)),
        ("[2001:db8::1]:443", 1, Reported("2001:db8::1", PROXY)),
        ("2001:db8::1", 1, Reported("2001:db8::1", PROXY)),
        # Two proxies: the outer one reports the client, the inner one reports the outer one.
        ("6.6.6.6, 203.0.113.7:1000, 10.0.0.9:443", 2, Reported("203.0.113.7", "10.0.0.9")),
        ("unknown, 10.0.0.9", 2, Reported(None, "10.0.0.9")),
        ("203.0.113.7, garbage", 2, Reported("203.0.113.7", PROXY)),
        # Fewer entries than proxies: the leftmost was still written by a trusted proxy.
        ("203.0.113.7", 2, Reported("203.0.113.7", PROXY)),
        ("unknown", 1, Reported(None, PROXY)),
        ("not-an-address", 1, Reported(None, PROXY)),
        ("_hidden", 1, Reported("_hidden", PROXY)),
        (None, 1, Reported(PROXY, PROXY)),
        (" , ", 1, Reported(PROXY, PROXY)),
    ],
)
def test_reported_x_forwarded_for(header_value: str | None, trusted: int, expected: Reported) -> None:
    assert reported(PROXY, header_value, trusted_proxies=trusted) == expected


@pytest.mark.parametrize(
    ("header_value", "trusted", "expected"),
    [
        ('for="10.6.6.1:5123"', 1, Reported("10.6.6.1", PROXY)),
        ('for=6.6.6.6, for="[2001:db8::1]:443";proto=https', 1, Reported("2001:db8::1", PROXY)),
        ("for=unknown", 1, Reported(None, PROXY)),
        ("for=_hidden", 1, Reported("_hidden", PROXY)),
        ("proto=https", 1, Reported(None, PROXY)),
        ('for="203.0.113.7", for=10.0.0.9', 2, Reported("203.0.113.7", "10.0.0.9")),
        ('for="x", for=9.9.9.9;by=", for=5.6.7.8', 1, Reported(None, PROXY)),
    ],
)
def test_reported_forwarded(header_value: str, trusted: int, expected: Reported) -> None:
    assert reported(PROXY, header_value, trusted_proxies=trusted, header="forwarded") == expected


@pytest.fixture
def one_proxy(settings: Settings) -> Settings:
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_HEADER = "x-forwarded-for"
    settings.TRUSTED_PROXY_OBFUSCATED_IDS = "per-request"
    return settings


def test_client_ip_is_the_proxys_report_when_it_is_an_address(rf: RequestFactory, one_proxy: Settings) -> None:
    request = rf.get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="10.6.6.1:5123")

    assert client_ip(request) == "10.6.6.1"
    assert client_address(request) == ipaddress.ip_address("10.6.6.1")


@pytest.mark.parametrize("entry", ["unknown", "garbage", "_hidden", "[2001:db8::1", "1.2.3.4:99999999"])
def test_a_client_the_proxy_cannot_name_counts_against_the_proxy(
    rf: RequestFactory, one_proxy: Settings, entry: str
) -> None:
    request = rf.get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"1.1.1.1, {entry}")

    assert client_ip(request) == PROXY
    assert client_address(request) is None


def test_obfuscated_identifiers_are_clients_only_when_the_proxies_keep_one_per_client(
    rf: RequestFactory, one_proxy: Settings
) -> None:
    one_proxy.TRUSTED_PROXY_HEADER = "forwarded"
    request = rf.get("/", REMOTE_ADDR=PROXY, HTTP_FORWARDED='for="_c1a2:_p9"')

    assert client_ip(request) == PROXY
    one_proxy.TRUSTED_PROXY_OBFUSCATED_IDS = "per-client"
    assert client_ip(request) == "_c1a2"
    assert client_address(request) is None, "an obfuscated identifier is no address"


def test_only_the_configured_header_is_read(rf: RequestFactory, one_proxy: Settings) -> None:
    both = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": "198.51.100.1", "HTTP_FORWARDED": "for=198.51.100.2"}

    assert client_ip(rf.get("/", **both)) == "198.51.100.1"
    one_proxy.TRUSTED_PROXY_HEADER = "forwarded"
    assert client_ip(rf.get("/", **both)) == "198.51.100.2"
    # The proxies set Forwarded; an X-Forwarded-For alone is the client's own claim.
    assert client_ip(rf.get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.1")) == PROXY


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.6.6.1", "10.6.6.1"),
        ("10.6.6.1:5123", "10.6.6.1"),
        ("[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:abcd::9", "2001:db8:1:2::/64"),
        ("::ffff:10.6.6.1", "10.6.6.1"),
        ("_hidden", "_hidden"),
        ("nonsense", "invalid"),
    ],
)
def test_ip_key(address: str, key: str) -> None:
    assert ip_key(address, 64) == key


def test_the_header_setting_accepts_either_header_in_any_case_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    choices = ("x-forwarded-for", "forwarded")
    monkeypatch.setenv("TRUSTED_PROXY_HEADER", " Forwarded ")
    assert env_choice("TRUSTED_PROXY_HEADER", "x-forwarded-for", choices) == "forwarded"
    monkeypatch.setenv("TRUSTED_PROXY_HEADER", "X-Real-IP")
    with pytest.raises(ImproperlyConfigured, match="X-Real-IP"):
        env_choice("TRUSTED_PROXY_HEADER", "x-forwarded-for", choices)
