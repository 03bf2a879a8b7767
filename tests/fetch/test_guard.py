"""The address rules, as pure functions: nothing here opens a socket (the NetSpy would say so).

The end-to-end guard tests (redirects to these addresses, rebinding) run in
test_guard_netns.py, inside an isolated network namespace.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from taisu_etl.fetch import FetchPolicy, FetchRefused, check_address, parse_ip_host, resolve_and_check
from taisu_etl.fetch.guard import address_allowed
from tests.fetch.support import fake_getaddrinfo, run

REFUSED = [
    "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3", "169.254.169.254", "169.254.0.1",
    "100.64.0.1", "100.127.255.255", "192.0.0.1", "192.0.2.1", "198.18.0.1", "198.51.100.1",
    "203.0.113.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::", "::1", "fe80::1", "febf::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "ff0e::1",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:127.0.0.1", "::ffff:0.0.0.0",
    "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated) is refused whatever it embeds
    "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1", "64:ff9b::7f00:1", "64:ff9b:1::8.8.8.8",
    "2002:0a00:0001::", "2002:a9fe:a9fe::1", "2002:7f00:1::",  # 6to4 of private/metadata/loopback
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1", "3fff::1", "100::1", "5f00::1",
    "fe80::1%eth0", "not an address", "",
]
ALLOWED = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.32.0.1",
    "2606:4700:4700::1111", "2a00:1450:4001:81c::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("ip", REFUSED)
def test_non_global_addresses_are_refused(ip: str) -> None:
    assert check_address(ip) is False


@pytest.mark.parametrize("ip", ALLOWED)
def test_global_addresses_are_allowed(ip: str) -> None:
    assert check_address(ip) is True


def test_check_address_accepts_address_objects() -> None:
    assert check_address(ipaddress.ip_address("8.8.4.4"))
    assert not check_address(ipaddress.ip_address("10.1.2.3"))


@pytest.mark.parametrize(
    "host, expected",
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("10.0.0.1.", "10.0.0.1"),
        ("[::ffff:a00:1]", "::ffff:a00:1"),
        ("::1", "::1"),
    ],
)
def test_numeric_hosts_are_read_as_addresses(host: str, expected: str) -> None:
    assert parse_ip_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "deadbeef", "0x7f.example", "images.127.cn"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ip_host(host) is None


@pytest.mark.parametrize("host", ["999.1.1.1", "08.0.0.1", "1.2.3.4.5", "foo.0x10", "example.123", "[::zz]"])
def test_malformed_numeric_hosts_are_bad_urls(host: str) -> None:
    with pytest.raises(FetchRefused) as err:
        parse_ip_host(host)
    assert err.value.reason == "bad_url"


def test_allowlist_unlocks_only_named_loopback_ports() -> None:
    policy = FetchPolicy(allow_loopback=frozenset({"127.0.0.1:8080", "[::1]:8080", "Synth.Test:9000"}))
    allow = policy.allow_loopback
    assert allow == {"127.0.0.1:8080", "[::1]:8080", "synth.test:9000"}
    lo4, lo6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert address_allowed(lo4, "127.0.0.1", 8080, allow)
    assert address_allowed(lo6, "::1", 8080, allow)
    assert not address_allowed(lo4, "127.0.0.1", 8081, allow)  # other port
    assert address_allowed(lo4, "synth.test", 9000, allow)  # by name
    assert not address_allowed(lo4, "other.test", 9000, allow)
    # the allowlist never unlocks anything but loopback, even for a listed host:port
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), "synth.test", 9000, allow)
    assert not address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), "127.0.0.1", 8080, allow)
    # and nothing is unlocked by default
    assert FetchPolicy().allow_loopback == frozenset()
    assert not address_allowed(lo4, "127.0.0.1", 8080, FetchPolicy().allow_loopback)


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:http", ":80", "host:99999"])
def test_bad_allowlist_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError):
        FetchPolicy(allow_loopback=frozenset({entry}))


def test_resolve_and_check_refuses_a_host_if_any_address_is_private() -> None:
    gai = fake_getaddrinfo({"good.test": ["93.184.216.34", "2606:2800:220:1::1"],
                            "mixed.test": ["93.184.216.34", "10.0.0.1"],
                            "v6private.test": ["2606:2800:220:1::1", "fd00::1"]})
    policy = FetchPolicy()
    assert run(resolve_and_check("good.test", 80, policy, gai)) == ["93.184.216.34", "2606:2800:220:1::1"]
    for host, bad in (("mixed.test", "10.0.0.1"), ("v6private.test", "fd00::1")):
        with pytest.raises(FetchRefused) as err:
            run(resolve_and_check(host, 80, policy, gai))
        assert err.value.reason == "blocked_address" and bad in err.value.detail


def test_resolve_and_check_distinguishes_nxdomain_from_temporary_failure() -> None:
    async def temporary(host: str, port: int) -> list:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with pytest.raises(FetchRefused) as err:
        run(resolve_and_check("gone.test", 80, FetchPolicy(), fake_getaddrinfo({})))
    assert (err.value.reason, err.value.permanent) == ("dns", True)
    with pytest.raises(FetchRefused) as err:
        run(resolve_and_check("flaky.test", 80, FetchPolicy(), temporary))
    assert (err.value.reason, err.value.permanent) == ("dns", False)
