"""The address guard end to end: redirects and names that point at private, link-local,
metadata and loopback addresses are refused before any connection is attempted.

Two independent safety nets make sure a broken guard still reaches nothing:
1. the NetSpy (conftest.py) refuses, before the system call, every connect to anything but the
   test's own server and records it as a violation that fails the test;
2. this module only runs inside a fresh network namespace whose only interface is loopback
   (tests/fetch/test_netns.py re-runs it there under `unshare -n`); elsewhere it is skipped.
"""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from taisu_etl.fetch import Fetcher, FetchPolicy, FetchRefused
from tests.fetch.support import NetSpy, fake_getaddrinfo, image, in_isolated_netns, run, serve

if not in_isolated_netns():
    pytest.skip("runs only inside its own network namespace; test_netns.py runs it there", allow_module_level=True)

pytestmark = pytest.mark.netns

FORBIDDEN_TARGETS = [
    "http://10.0.0.1/x.png",
    "http://192.168.1.1/x.png",
    "http://172.16.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/x.png",
    "http://0.0.0.0/x.png",
    "http://[::ffff:10.0.0.1]/x.png",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[2002:0a00:0001::]/x.png",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",
    "http://[fe80::1]/x.png",
    "http://[fd00::1]/x.png",
    "http://[::1]/x.png",
    "http://127.0.0.1/x.png",
    "http://0x7f000001/x.png",
    "http://2130706433/x.png",
    "http://0x7f.1/x.png",
    "http://0177.0.0.1/x.png",
    "http://127.1/x.png",
    "http://0xa9fea9fe/latest/meta-data/",
    "http://2852039166/latest/meta-data/",
    "https://10.0.0.1/x.png",
]


@pytest.fixture(autouse=True)
def _really_isolated() -> None:
    # The env var alone proves nothing: check the namespace has loopback and nothing else.
    assert [name for _, name in socket.if_nameindex()] == ["lo"]


def _redirect(location: str):
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return handler


@pytest.mark.parametrize("target", FORBIDDEN_TARGETS)
def test_redirect_to_forbidden_address_is_refused_before_connecting(net: NetSpy, target: str) -> None:
    async def scenario() -> None:
        async with serve(net, {"/r": _redirect(target)}) as srv:
            pol = FetchPolicy(allow_loopback=frozenset({srv.allow}), honour_robots=False)
            async with Fetcher(pol) as f:
                res = await f.fetch(srv.url("/r"))
            assert (res.reason, res.permanent) == ("blocked_address", True), res.detail
            assert len(res.redirects) == 1
            assert srv.paths() == ["/r"]
            # the only connection ever attempted went to the test server
            assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


@pytest.mark.parametrize("target", FORBIDDEN_TARGETS)
def test_direct_fetch_of_forbidden_address_never_connects(net: NetSpy, target: str) -> None:
    async def scenario() -> None:
        async with Fetcher(FetchPolicy()) as f:  # robots on: it must not be fetched either
            res = await f.fetch(target)
        assert res.reason == "blocked_address", res.detail

    run(scenario())
    assert net.attempts == []


def test_numeric_spellings_of_loopback_count_against_the_allowlist(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/x.png": image}) as srv:
            pol = FetchPolicy(allow_loopback=frozenset({srv.allow}), honour_robots=False)
            async with Fetcher(pol) as f:
                # same address and port in another spelling: it IS the allowlisted server
                same = await f.fetch(f"http://0x7f.1:{srv.port}/x.png")
                assert same.ok and same.final_url == srv.url("/x.png")
                other = await f.fetch(f"http://2130706433:{srv.port + 1}/x.png")
                assert other.reason == "blocked_address"
        assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


@pytest.mark.parametrize("target", ["ftp://10.0.0.1/x.png", "file:///etc/passwd", "gopher://169.254.169.254:70/_"])
def test_redirect_to_other_schemes_is_refused(net: NetSpy, target: str) -> None:
    async def scenario() -> None:
        async with serve(net, {"/r": _redirect(target)}) as srv:
            pol = FetchPolicy(allow_loopback=frozenset({srv.allow}), honour_robots=False)
            async with Fetcher(pol) as f:
                res = await f.fetch(srv.url("/r"))
            assert res.reason == "bad_url"
            assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


@pytest.mark.parametrize(
    "answer", [["10.0.0.1"], ["169.254.169.254"], ["93.184.216.34", "192.168.0.10"], ["::ffff:10.0.0.1"], ["fd00::5"]]
)
def test_names_resolving_to_forbidden_addresses_are_refused(net: NetSpy, answer: list[str]) -> None:
    async def scenario() -> None:
        async with serve(net, {"/r": _redirect("http://evil.test/x.png")}) as srv:
            pol = FetchPolicy(allow_loopback=frozenset({srv.allow, "evil.test:80"}), honour_robots=False)
            async with Fetcher(pol, getaddrinfo=fake_getaddrinfo({"evil.test": answer})) as f:
                res = await f.fetch(srv.url("/r"))
                direct = await f.fetch("http://evil.test/y.png")
            assert res.reason == "blocked_address" and direct.reason == "blocked_address"
            assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


def test_dns_rebinding_cannot_redirect_the_connection(net: NetSpy) -> None:
    """The name answers 127.0.0.1 (allowlisted) first and 10.0.0.1 afterwards. With caching the
    connection uses the checked answer; with no cache at all, the second answer (asked for by
    the connector itself) is checked again and refused."""
    answers = iter([["127.0.0.1"]] + [["10.0.0.1"]] * 10)
    calls: list[str] = []

    async def scenario() -> None:
        async with serve(net, {"/x.png": image}) as srv:
            host = "rebind.test"
            gai = fake_getaddrinfo(lambda _: next(answers), calls)
            pol = FetchPolicy(allow_loopback=frozenset({f"{host}:{srv.port}"}), honour_robots=False)
            async with Fetcher(pol, getaddrinfo=gai) as f:
                first = [await f.fetch(srv.url("/x.png", host=host)) for _ in range(3)]
            assert all(r.ok for r in first) and calls == [host]

            nocache = FetchPolicy(allow_loopback=frozenset({f"{host}:{srv.port}"}), honour_robots=False,
                                  dns_cache_ttl_s=0.0)
            answers2 = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
            async with Fetcher(nocache, getaddrinfo=fake_getaddrinfo(lambda _: next(answers2))) as f:
                res = await f.fetch(srv.url("/x.png", host=host))
            assert res.reason == "blocked_address"
            assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


def test_the_session_itself_cannot_reach_forbidden_addresses(net: NetSpy) -> None:
    """Defence in depth: even a request that skips Fetcher.fetch's checks goes through the guard,
    IP literals included (aiohttp would otherwise bypass the resolver for them)."""

    async def scenario() -> None:
        async with Fetcher(FetchPolicy()) as f:
            assert f._session is not None
            for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[::1]:8080/", "http://127.0.0.1:9/"):
                with pytest.raises(FetchRefused) as err:
                    async with f._session.get(url):
                        pass
                assert err.value.reason == "blocked_address"

    run(scenario())
    assert net.attempts == []


def test_unresolvable_name_is_dns(net: NetSpy) -> None:
    """The real system resolver, which in this namespace can reach no name server."""
    net.real_dns = True

    async def scenario() -> None:
        async with Fetcher(FetchPolicy()) as f:
            res = await f.fetch("http://nonexistent.invalid/x.png")
        assert res.reason == "dns" and res.status is None

    run(scenario())
    assert net.attempts == []
