"""The Fetcher against a loopback aiohttp server: outcomes, limits, headers, politeness.

Every test runs under the NetSpy (conftest.py): the only connections allowed are to the test's
own server on 127.0.0.1, and there is no real DNS. No assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from typing import Any

import pytest
from aiohttp import web

from taisu_etl.fetch import DEFAULT_USER_AGENT, PERMANENCE, Fetcher, FetchPolicy, FetchResult
from taisu_etl.vocab import REASONS, Stage
from tests.fetch.support import NetSpy, Server, fake_getaddrinfo, image, run, serve, unused_port


def policy_for(*servers: Server, **kw: object) -> FetchPolicy:
    kw.setdefault("honour_robots", False)
    return FetchPolicy(allow_loopback=frozenset(s.allow for s in servers), **kw)  # type: ignore[arg-type]


async def fetch_one(policy: FetchPolicy, url: str, **kw: object) -> FetchResult:
    async with Fetcher(policy, **kw) as f:  # type: ignore[arg-type]
        return await f.fetch(url)


def status(code: int, headers: dict[str, str] | None = None):
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=code, text=f"status {code}", headers=headers or {})

    return handler


def redirect(location: str, code: int = 302):
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=code, headers={"Location": location})

    return handler


def test_ok_fetch_sends_identity_encoding_and_the_configured_user_agent(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/img.png"))
            assert res.ok and res.status == 200 and res.reason is None
            assert res.body is not None and res.body.startswith(b"\x89PNG")
            assert res.content_type == "image/png" and res.final_url == srv.url("/img.png")
            assert res.redirects == () and res.opt_out is None and not res.permanent
            hit = srv.hits[-1]
            assert hit.headers["Accept-Encoding"] == "identity"
            assert hit.headers["User-Agent"] == DEFAULT_USER_AGENT
            assert "Cookie" not in hit.headers and "Authorization" not in hit.headers

            custom = policy_for(srv, user_agent="acme-research-crawler/2.0 (+mailto:crawl@example.org)")
            await fetch_one(custom, srv.url("/img.png"))
            assert srv.hits[-1].headers["User-Agent"] == "acme-research-crawler/2.0 (+mailto:crawl@example.org)"
            # the connection went to the test server and nowhere else
            assert set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


def test_loopback_is_refused_unless_allowlisted(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            res = await fetch_one(FetchPolicy(honour_robots=False), srv.url("/img.png"))
            assert (res.reason, res.permanent) == ("blocked_address", True)
            other_port = FetchPolicy(allow_loopback=frozenset({f"127.0.0.1:{srv.port + 1}"}), honour_robots=False)
            res = await fetch_one(other_port, srv.url("/img.png"))
            assert res.reason == "blocked_address"
            assert srv.hits == [] and net.attempts == []

    run(scenario())


def test_credentials_in_the_url_are_never_sent(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            res = await fetch_one(policy_for(srv), f"http://user:secret@127.0.0.1:{srv.port}/img.png#frag")
            assert res.ok
            assert "Authorization" not in srv.hits[-1].headers

    run(scenario())


@pytest.mark.parametrize(
    "code, reason, permanent, expired",
    [
        (404, "http_404", True, True),
        (410, "http_410", True, True),
        (403, "http_403", True, False),
        (400, "http_4xx", True, False),
        (451, "http_4xx", True, False),
        (408, "http_4xx", False, False),
        (429, "http_429", False, False),
        (500, "http_5xx", False, False),
        (502, "http_5xx", False, False),
        (503, "http_5xx", False, False),
    ],
)
def test_status_codes_map_to_reasons(net: NetSpy, code: int, reason: str, permanent: bool, expired: bool) -> None:
    async def scenario() -> None:
        async with serve(net, {"/x": status(code)}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/x"))
            assert not res.ok and res.body is None
            assert (res.status, res.reason, res.permanent, res.expired) == (code, reason, permanent, expired)

    run(scenario())


def test_every_reason_the_fetcher_emits_is_a_fetch_code_in_the_vocabulary() -> None:
    for code in PERMANENCE:
        assert REASONS[code][0] is Stage.FETCH, code


def test_retry_after_seconds_pauses_the_host_without_further_requests(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/busy": status(429, {"Retry-After": "120"}), "/img.png": image}) as srv:
            async with Fetcher(policy_for(srv)) as f:
                res = await f.fetch(srv.url("/busy"))
                assert (res.reason, res.permanent, res.retry_after_s) == ("http_429", False, 120.0)
                later = await f.fetch(srv.url("/img.png"))
                assert (later.reason, later.permanent) == ("host_backoff", False)
                assert later.retry_after_s is not None and 0 < later.retry_after_s <= 120.0
                assert srv.paths() == ["/busy"]  # the paused host got nothing more
                (state,) = f.domain_states()
                assert state.host == "127.0.0.1" and state.failures == 1
                assert state.backoff_until is not None and state.backoff_until > time.time() + 60

    run(scenario())


def test_retry_after_http_date_on_503(net: NetSpy) -> None:
    async def scenario() -> None:
        when = email.utils.formatdate(time.time() + 3600, usegmt=True)
        async with serve(net, {"/maint": status(503, {"Retry-After": when})}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/maint"))
            assert (res.reason, res.permanent) == ("http_5xx", False)
            assert res.retry_after_s is not None and 3000 < res.retry_after_s <= 3600

    run(scenario())


def test_restored_backoff_is_honoured(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            async with Fetcher(policy_for(srv)) as f:
                from taisu_etl.fetch import HostState

                f.restore_domain_states([HostState("127.0.0.1", backoff_until=time.time() + 600, failures=2)])
                res = await f.fetch(srv.url("/img.png"))
                assert res.reason == "host_backoff" and srv.hits == []

    run(scenario())


def test_redirect_chain_is_followed_and_recorded(net: NetSpy) -> None:
    async def scenario() -> None:
        routes = {"/a": redirect("/b", 301), "/b": redirect("c", 307), "/c": redirect("/img.png?v=1", 308),
                  "/img.png": image}
        async with serve(net, routes) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/a"))
            assert res.ok and res.url == srv.url("/a")
            assert res.redirects == (srv.url("/b"), srv.url("/c"), srv.url("/img.png?v=1"))
            assert res.final_url == srv.url("/img.png?v=1")
            assert srv.paths() == ["/a", "/b", "/c", "/img.png"]

    run(scenario())


def test_redirect_loop_is_too_many_redirects(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/a": redirect("/b"), "/b": redirect("/a")}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/a"))
            assert (res.reason, res.permanent) == ("too_many_redirects", True)
            assert "loop" in res.detail and srv.paths() == ["/a", "/b"]

    run(scenario())


def test_at_most_five_redirects(net: NetSpy) -> None:
    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return await image(request)
        return web.Response(status=302, headers={"Location": f"/hop/{n - 1}"})

    async def scenario() -> None:
        async with serve(net, {"/hop/{n}": hop}) as srv:
            five = await fetch_one(policy_for(srv), srv.url("/hop/5"))
            assert five.ok and len(five.redirects) == 5
            srv.hits.clear()
            six = await fetch_one(policy_for(srv), srv.url("/hop/6"))
            assert (six.reason, six.permanent) == ("too_many_redirects", True)
            assert len(six.redirects) == 5 and len(srv.hits) == 6  # the 6th Location is never requested

    run(scenario())


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "gopher://127.0.0.1:70/",
                                      "javascript:alert(1)", "http://999.1.1.1/"])
def test_redirects_to_non_http_urls_are_refused(net: NetSpy, location: str) -> None:
    async def scenario() -> None:
        async with serve(net, {"/r": redirect(location)}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/r"))
            assert (res.reason, res.permanent) == ("bad_url", True)
            assert srv.paths() == ["/r"] and set(net.attempts) == {("127.0.0.1", srv.port)}

    run(scenario())


def test_slow_drip_hits_the_deadline(net: NetSpy) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        for _ in range(100):  # bounded: 10 s at most if the client never gave up
            await resp.write(b"\xff")
            await asyncio.sleep(0.1)
        return resp

    async def scenario() -> None:
        async with serve(net, {"/drip": drip}) as srv:
            res = await fetch_one(policy_for(srv, deadline_s=0.5), srv.url("/drip"))
            assert (res.reason, res.permanent, res.status) == ("timeout", False, None)

    run(scenario())


def test_endless_body_is_too_large(net: NetSpy) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})  # chunked: no Content-Length
        await resp.prepare(request)
        chunk = b"\0" * 65536
        for _ in range(256):  # bounded at 16 MiB
            await resp.write(chunk)
        return resp

    async def scenario() -> None:
        async with serve(net, {"/endless": endless}) as srv:
            res = await fetch_one(policy_for(srv, max_bytes=256 * 1024), srv.url("/endless"))
            assert (res.reason, res.permanent, res.body) == ("too_large", True, None)
            assert "more than 262144 bytes" in res.detail

    run(scenario())


def test_content_length_over_the_cap_is_refused_before_reading(net: NetSpy) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(10**12)})
        await resp.prepare(request)
        await resp.write(b"\0" * 1024)  # far less than claimed: the client must not wait for it
        return resp

    async def scenario() -> None:
        async with serve(net, {"/huge": huge}) as srv:
            res = await fetch_one(policy_for(srv, max_bytes=1024 * 1024), srv.url("/huge"))
            assert res.reason == "too_large" and "Content-Length 1000000000000" in res.detail

    run(scenario())


def test_understated_content_length_never_yields_more_bytes(net: NetSpy) -> None:
    """A server that says 10 bytes and sends a megabyte: the extra bytes are never taken as body."""

    async def scenario() -> None:
        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n" + b"y" * (1 << 20))
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        net.allow("127.0.0.1", port)
        try:
            policy = FetchPolicy(allow_loopback=frozenset({f"127.0.0.1:{port}"}), honour_robots=False,
                                 max_bytes=4096)
            res = await fetch_one(policy, f"http://127.0.0.1:{port}/x")
            assert res.body is None or len(res.body) == 10
            assert res.ok or res.reason == "connect"  # aiohttp rejects the trailing garbage
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_connection_refused_is_connect(net: NetSpy) -> None:
    port = unused_port()
    net.allow("127.0.0.1", port)
    policy = FetchPolicy(allow_loopback=frozenset({f"127.0.0.1:{port}"}), honour_robots=False)
    res = run(fetch_one(policy, f"http://127.0.0.1:{port}/x"))
    assert (res.reason, res.permanent, res.status) == ("connect", False, None)


def test_dns_failures_nxdomain_is_expired_temporary_is_retried(net: NetSpy) -> None:
    async def flaky(host: str, port: int) -> list:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    gone = run(fetch_one(FetchPolicy(), "http://gone.example/x.jpg", getaddrinfo=fake_getaddrinfo({})))
    assert (gone.reason, gone.permanent, gone.expired) == ("dns", True, True)
    later = run(fetch_one(FetchPolicy(), "http://flaky.example/x.jpg", getaddrinfo=flaky))
    assert (later.reason, later.permanent, later.expired) == ("dns", False, False)


def test_names_resolve_through_the_injected_resolver_and_are_cached(net: NetSpy) -> None:
    async def scenario() -> None:
        calls: list[str] = []
        async with serve(net, {"/img.png": image}) as srv:
            policy = FetchPolicy(allow_loopback=frozenset({f"img.synth.test:{srv.port}"}), honour_robots=False)
            gai = fake_getaddrinfo({"img.synth.test": ["127.0.0.1"]}, calls)
            async with Fetcher(policy, getaddrinfo=gai) as f:
                results = [await f.fetch(srv.url("/img.png", host="img.synth.test")) for _ in range(5)]
            assert all(r.ok for r in results)
            assert calls == ["img.synth.test"]  # one lookup, reused (and re-checked by the guard)
            assert srv.hits[0].headers["Host"] == f"img.synth.test:{srv.port}"  # Host keeps the name

    run(scenario())


@pytest.mark.parametrize(
    "tags, expect",
    [
        (["noai"], "noai"),
        (["noimageai"], "noimageai"),
        (["noindex, noimageai"], "noimageai"),
        (["taisu-etl: noai"], "noai"),
        (["otherbot: noai"], None),
        (["otherbot: noai, noimageai"], None),
        (["noindex"], None),
    ],
)
def test_x_robots_tag_opt_outs(net: NetSpy, tags: list[str], expect: str | None) -> None:
    async def tagged(_: web.Request) -> web.Response:
        resp = web.Response(body=b"\x89PNG....", content_type="image/png")
        for t in tags:
            resp.headers.add("X-Robots-Tag", t)
        return resp

    async def scenario() -> None:
        async with serve(net, {"/img.png": tagged}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/img.png"))
            if expect is None:
                assert res.ok
            else:
                assert (res.reason, res.permanent, res.body) == ("noai_header", True, None)
                assert res.opt_out is not None
                assert res.opt_out["source"] == "X-Robots-Tag" and res.opt_out["directive"] == expect
                assert res.opt_out["header"] in tags and res.opt_out["url"] == srv.url("/img.png")
            # the opt-out can be switched off by policy (e.g. for a rights holder's own archive)
            off = await fetch_one(policy_for(srv, honour_noai=False), srv.url("/img.png"))
            assert off.ok

    run(scenario())


def _gated_image(limit: int) -> tuple[Any, dict[str, int]]:
    """A handler that holds every request until `limit` are in flight at once (or gives up after
    5 s, in which case `max` stays below the limit and the caller's assertion says so)."""
    state = {"inflight": 0, "max": 0}
    full = asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        state["inflight"] += 1
        state["max"] = max(state["max"], state["inflight"])
        try:
            if state["inflight"] >= limit:
                full.set()
            try:
                await asyncio.wait_for(full.wait(), 5)
            except TimeoutError:
                pass
            return await image(request)
        finally:
            state["inflight"] -= 1

    return gated, state


def test_per_host_concurrency_is_respected(net: NetSpy) -> None:
    limit = 4
    gated, state = _gated_image(limit)

    async def scenario() -> None:
        async with serve(net, {"/img/{n}": gated}) as srv:
            policy = policy_for(srv, per_host_concurrency=limit, per_host_rate=None, concurrency=64)
            async with Fetcher(policy) as f:
                results = [r async for r in f.fetch_many(srv.url(f"/img/{n}") for n in range(24))]
            assert len(results) == 24 and all(r.ok for r in results)
            assert {r.url for r in results} == {srv.url(f"/img/{n}") for n in range(24)}

    run(scenario())
    assert state["max"] == limit


def test_total_concurrency_is_respected_across_hosts(net: NetSpy) -> None:
    limit = 3
    gated, state = _gated_image(limit)

    async def scenario() -> None:
        async with serve(net, {"/img/{n}": gated}) as srv:
            names = [f"h{i}.synth.test" for i in range(6)]
            policy = FetchPolicy(allow_loopback=frozenset(f"{n}:{srv.port}" for n in names), honour_robots=False,
                                 concurrency=limit, per_host_concurrency=8, per_host_rate=None)
            gai = fake_getaddrinfo({n: ["127.0.0.1"] for n in names})
            urls = [srv.url(f"/img/{i}", host=names[i % 6]) for i in range(30)]
            async with Fetcher(policy, getaddrinfo=gai) as f:
                results = [r async for r in f.fetch_many(urls)]
            assert sorted(r.url for r in results) == sorted(urls) and all(r.ok for r in results)

    run(scenario())
    assert state["max"] == limit


def test_fetch_many_bounded_load(net: NetSpy) -> None:
    """A few hundred fetches through one pooled session: all succeed, connections are reused."""

    async def scenario() -> None:
        async with serve(net, {"/img/{n}": image}) as srv:
            policy = policy_for(srv, per_host_concurrency=16, per_host_rate=None, concurrency=16)

            async def urls():
                for n in range(400):
                    yield srv.url(f"/img/{n}")

            async with Fetcher(policy) as f:
                results = [r async for r in f.fetch_many(urls(), window=32)]
            assert len(results) == 400 and all(r.ok for r in results)
            assert len(net.attempts) <= 16  # keep-alive: at most one connection per slot

    run(scenario())


def test_fetch_many_cancels_outstanding_work_when_abandoned(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img/{n}": image}) as srv:
            policy = policy_for(srv, per_host_concurrency=2, per_host_rate=None)
            async with Fetcher(policy) as f:
                gen = f.fetch_many(srv.url(f"/img/{n}") for n in range(100))
                first = await anext(gen)
                await gen.aclose()
                assert first.ok
                assert len(srv.hits) < 100
            left = [t for t in asyncio.all_tasks() if "Fetcher" in getattr(t.get_coro(), "__qualname__", "")]
            assert left == []

    run(scenario())


def test_result_details_are_json_ready(net: NetSpy) -> None:
    import json

    async def scenario() -> None:
        async with serve(net, {"/a": redirect("/img.png"), "/img.png": image}) as srv:
            res = await fetch_one(policy_for(srv), srv.url("/a"))
            d = json.loads(json.dumps(res.details()))
            assert d["status"] == 200 and d["bytes"] == len(res.body or b"")
            assert d["redirects"] == [srv.url("/img.png")]

    run(scenario())
