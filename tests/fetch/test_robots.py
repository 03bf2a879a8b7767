"""robots.txt through the Fetcher: RFC 9309 outcomes, caching, evidence."""

from __future__ import annotations

import asyncio

from aiohttp import web

from taisu_etl.fetch import Fetcher, FetchPolicy
from tests.fetch.support import NetSpy, fake_getaddrinfo, image, run, serve

ROBOTS = """\
User-agent: *
Disallow: /private/
Allow: /private/ok.png

User-agent: taisu-etl
Disallow: /no-datasets/
Crawl-delay: 0.01
"""


def policy(srv, **kw) -> FetchPolicy:  # type: ignore[no-untyped-def]
    return FetchPolicy(allow_loopback=frozenset({srv.allow}), per_host_rate=None, **kw)


def status(code: int):
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=code, text="nope")

    return handler


def test_disallowed_urls_are_never_requested_and_the_rule_is_recorded(net: NetSpy) -> None:
    routes = {"/private/{name}": image, "/no-datasets/{name}": image, "/public/{name}": image}

    async def scenario() -> None:
        async with serve(net, routes, robots=ROBOTS) as srv:
            async with Fetcher(policy(srv)) as f:
                ok = await f.fetch(srv.url("/public/a.png"))
                assert ok.ok
                # our own group replaces the * group (RFC 9309 2.2.1): /private/ is not in it
                private = await f.fetch(srv.url("/private/a.png"))
                assert private.ok
                no = await f.fetch(srv.url("/no-datasets/a.png?x=1"))
                assert (no.reason, no.permanent, no.body) == ("robots_disallow", True, None)
                ev = no.opt_out
                assert ev is not None and ev["source"] == "robots.txt"
                assert ev["robots_url"] == srv.url("/robots.txt") and ev["status"] == 200
                assert ev["agent"] == "taisu-etl" and ev["rule"] == "disallow: /no-datasets/"
                assert ev["url"] == srv.url("/no-datasets/a.png?x=1") and ev["fetched_at"]
                (state,) = f.domain_states()
                assert state.robots is not None and state.robots["mode"] == "rules"
                assert state.crawl_delay_s == 0.01
            assert "/no-datasets/a.png" not in srv.paths()
            assert srv.paths().count("/robots.txt") == 1

    run(scenario())


def test_star_group_applies_to_other_agents(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/private/{name}": image}, robots=ROBOTS) as srv:
            async with Fetcher(policy(srv, robots_agent="otherbot")) as f:
                res = await f.fetch(srv.url("/private/a.png"))
                assert res.reason == "robots_disallow" and res.opt_out["rule"] == "disallow: /private/"  # type: ignore[index]
                allowed = await f.fetch(srv.url("/private/ok.png"))  # the longer Allow wins
                assert allowed.ok

    run(scenario())


def test_robots_is_fetched_once_for_many_urls(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img/{n}": image}, robots="User-agent: *\nDisallow: /admin\n") as srv:
            async with Fetcher(policy(srv, per_host_concurrency=8)) as f:
                results = [r async for r in f.fetch_many(srv.url(f"/img/{n}") for n in range(40))]
                assert all(r.ok for r in results)
                assert f.robots.fetches == 1
            assert srv.paths().count("/robots.txt") == 1

    run(scenario())


def test_missing_robots_allows_everything(net: NetSpy) -> None:
    async def scenario() -> None:
        for code in (404, 401, 403, 410):
            async with serve(net, {"/robots.txt": status(code), "/img.png": image}) as srv:
                async with Fetcher(policy(srv)) as f:
                    res = await f.fetch(srv.url("/img.png"))
                    assert res.ok, code
                    assert f.domain_states()[0].robots["mode"] == "allow_all"  # type: ignore[index]

    run(scenario())


def test_unreachable_robots_disallows_temporarily(net: NetSpy) -> None:
    async def scenario() -> None:
        for code in (500, 503, 429):
            async with serve(net, {"/robots.txt": status(code), "/img.png": image}) as srv:
                async with Fetcher(policy(srv)) as f:
                    res = await f.fetch(srv.url("/img.png"))
                    assert (res.reason, res.permanent) == ("robots_disallow", False), code
                    assert res.opt_out is not None and res.opt_out["mode"] == "disallow_all"
                    assert res.opt_out["status"] == code
                assert "/img.png" not in srv.paths()

    run(scenario())


def test_robots_timeout_disallows_temporarily(net: NetSpy) -> None:
    async def stuck(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="User-agent: *\nAllow: /\n")

    async def scenario() -> None:
        async with serve(net, {"/robots.txt": stuck, "/img.png": image}) as srv:
            async with Fetcher(policy(srv, robots_timeout_s=0.2)) as f:
                res = await f.fetch(srv.url("/img.png"))
                assert (res.reason, res.permanent) == ("robots_disallow", False)
                assert res.opt_out["error"] == "timeout"  # type: ignore[index]
            assert "/img.png" not in srv.paths()

    run(scenario())


def test_robots_redirects_are_followed(net: NetSpy) -> None:
    async def moved(_: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/real-robots.txt"})

    async def real(_: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /\n")

    async def scenario() -> None:
        async with serve(net, {"/robots.txt": moved, "/real-robots.txt": real, "/img.png": image}) as srv:
            async with Fetcher(policy(srv)) as f:
                res = await f.fetch(srv.url("/img.png"))
                assert (res.reason, res.permanent) == ("robots_disallow", True)

    run(scenario())


def test_each_redirect_hop_is_checked_against_its_own_robots(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}, robots="User-agent: *\nDisallow: /\n") as closed, \
                serve(net, {"/go": _redirect_to(closed.url("/img.png"))}) as open_:
            pol = FetchPolicy(allow_loopback=frozenset({closed.allow, open_.allow}), per_host_rate=None)
            async with Fetcher(pol) as f:
                res = await f.fetch(open_.url("/go"))
            assert res.reason == "robots_disallow" and res.redirects == (closed.url("/img.png"),)
            assert closed.paths() == ["/robots.txt"]

    run(scenario())


def test_robots_can_be_switched_off(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}, robots="User-agent: *\nDisallow: /\n") as srv:
            async with Fetcher(policy(srv, honour_robots=False)) as f:
                assert (await f.fetch(srv.url("/img.png"))).ok
            assert srv.paths() == ["/img.png"]

    run(scenario())


def test_robots_is_per_origin_through_the_resolver(net: NetSpy) -> None:
    async def scenario() -> None:
        async with serve(net, {"/img.png": image}, robots="User-agent: *\nDisallow: /\n") as srv:
            names = ["a.synth.test", "b.synth.test"]
            pol = FetchPolicy(allow_loopback=frozenset(f"{n}:{srv.port}" for n in names), per_host_rate=None)
            async with Fetcher(pol, getaddrinfo=fake_getaddrinfo({n: ["127.0.0.1"] for n in names})) as f:
                for n in names:
                    assert (await f.fetch(srv.url("/img.png", host=n))).reason == "robots_disallow"
                assert f.robots.fetches == 2
            assert [h.headers["Host"] for h in srv.hits] == [f"{n}:{srv.port}" for n in names]

    run(scenario())


def _redirect_to(location: str):
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return handler
