"""Test helpers for the fetcher: a loopback web server and a spy on every outgoing connection.

`NetSpy` replaces `socket.socket.connect`/`connect_ex` and `socket.getaddrinfo` for the duration
of a test. A connect to anything but a registered loopback test server is recorded as a violation
and refused *before* the real system call, so even a broken guard cannot send a packet; a name
lookup for anything but a numeric host is refused the same way (no test touches real DNS, except
the one that runs inside an isolated network namespace and opts in).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web

NETNS_ENV = "TAISU_FETCH_NETNS"  # set to "1" by tests/fetch/test_netns.py inside `unshare -n`
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 30.0) -> T:
    """Run one test scenario on a fresh event loop, with a hard cap so a bug cannot hang the suite."""

    async def capped() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(capped())


def _norm(host: str) -> str:
    try:
        return ipaddress.ip_address(host.split("%")[0]).compressed
    except ValueError:
        return host.lower()


@dataclass
class NetSpy:
    allowed: set[tuple[str, int]] = field(default_factory=set)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    real_dns: bool = False  # only inside the isolated namespace

    def allow(self, host: str, port: int) -> None:
        self.allowed.add((_norm(host), port))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        real_getaddrinfo = socket.getaddrinfo
        spy = self

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            key = (_norm(str(address[0])), int(address[1]))
            spy.attempts.append(key)
            if key not in spy.allowed:
                spy.violations.append(f"connect to {key[0]}:{key[1]}")
                raise ConnectionRefusedError(111, f"test net spy: connect to {key} refused")

        def connect(sock: socket.socket, address: Any) -> None:
            check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            check(sock, address)
            return real_connect_ex(sock, address)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None:
                spy.lookups.append(name)
                try:
                    ipaddress.ip_address(name.split("%")[0])
                except ValueError:
                    if not spy.real_dns:
                        spy.violations.append(f"real DNS lookup of {name!r}")
                        raise socket.gaierror(socket.EAI_NONAME, "test net spy: no real DNS") from None
            return real_getaddrinfo(host, port, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hit:
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class Server:
    port: int
    hits: list[Hit]

    @property
    def allow(self) -> str:
        """The allowlist entry for this server."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [h.path for h in self.hits]


@asynccontextmanager
async def serve(spy: NetSpy, routes: dict[str, Handler], *, robots: str | None = None) -> AsyncIterator[Server]:
    """An aiohttp server on 127.0.0.1 (port chosen by the OS) that records every request.

    `robots`: body of /robots.txt (200); None serves a 404 for it, like most image hosts.
    """
    hits: list[Hit] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(Hit(request.path, request.query_string, dict(request.headers)))
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_route("GET", path, handler)
    if "/robots.txt" not in routes:
        async def robots_txt(_: web.Request) -> web.Response:
            if robots is None:
                raise web.HTTPNotFound()
            return web.Response(text=robots, content_type="text/plain")

        app.router.add_get("/robots.txt", robots_txt)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    spy.allow("127.0.0.1", port)
    try:
        yield Server(port, hits)
    finally:
        await runner.cleanup()


async def image(request: web.Request) -> web.Response:
    return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")


def fake_getaddrinfo(table: dict[str, list[str]] | Callable[[str], list[str]], calls: list[str] | None = None):
    """A getaddrinfo replacement answering from a table (name -> addresses); unknown names are NXDOMAIN."""

    async def getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        addrs = table(host) if callable(table) else table.get(host)
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in addrs:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port)))
        return out

    return getaddrinfo


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_isolated_netns() -> bool:
    """True if this process runs in a network namespace whose only interface is loopback."""
    return os.environ.get(NETNS_ENV) == "1" and [name for _, name in socket.if_nameindex()] == ["lo"]
