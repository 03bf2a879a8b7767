"""The address guard: which IP addresses a fetch may connect to, and a resolver that enforces it.

Untrusted URLs must never make the crawler talk to its own network (cloud metadata at
169.254.169.254, databases on 10.x, the MinIO next door). The rule is simple and strict: an
address is allowed only if it is globally routable, after unwrapping every IPv6 form that carries
an IPv4 address inside it. Loopback is allowed only for "host:port" pairs named in
`FetchPolicy.allow_loopback` (tests, local benchmarks); private and link-local never.

Whole-host refusal: if a name resolves to several addresses and ANY of them is refused, the whole
name is refused rather than filtered down to the good ones. A name that mixes public and private
records is either misconfigured or a rebinding attempt, and a filtered answer would make the
outcome depend on which record the crawler happened to try.

`GuardedResolver` is the single place where names become addresses: the connector asks it for
every connection (IP literals included, see `client.GuardedConnector`), it checks every address it
returns, and the socket connects to exactly those addresses, so there is no second lookup that a
DNS-rebinding server could answer differently.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from taisu_etl.fetch.policy import FetchPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Same shape as `loop.getaddrinfo(host, port, ...)`: a list of (family, type, proto, canonname, sockaddr).
GetAddrInfo = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


class FetchRefused(Exception):
    """A fetch stopped by a rule before (or instead of) talking to the server.

    `reason` is a code from `taisu_etl.vocab.REASONS`; `permanent` says whether trying again
    later could change the outcome.
    """

    def __init__(self, reason: str, detail: str, *, permanent: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.permanent = permanent


# Ranges refused on top of `ipaddress`'s is_global. Python's tables have changed between
# releases (3.11 still calls multicast and site-local "global"), so the dangerous ones are
# listed here explicitly and the answer does not depend on the interpreter version.
_V4_BLOCKED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_V6_BLOCKED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "::ffff:0:0:0/96",  # SIIT
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) included
        "2001:db8::/32",
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _v4_allowed(addr: ipaddress.IPv4Address) -> bool:
    return addr.is_global and not any(addr in net for net in _V4_BLOCKED)


def check_address(ip: str | IPAddress) -> bool:
    """True if `ip` is a globally routable address a crawler may connect to.

    IPv6 forms that embed an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
    2002::/16) are judged by the IPv4 address inside; Teredo and IPv4-compatible addresses are
    refused outright. Scoped addresses ("fe80::1%eth0") and anything unparsable are refused.
    """
    if isinstance(ip, str):
        try:
            addr: IPAddress = ipaddress.ip_address(ip)
        except ValueError:
            return False
    else:
        addr = ip
    if isinstance(addr, ipaddress.IPv4Address):
        return _v4_allowed(addr)
    if addr.scope_id:
        return False
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return _v4_allowed(mapped)
    if addr in _NAT64:
        return _v4_allowed(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.teredo is not None:
        return False
    sixtofour = addr.sixtofour
    if sixtofour is not None and not _v4_allowed(sixtofour):
        return False
    return (
        addr.is_global
        and not addr.is_multicast
        and not addr.is_site_local
        and not addr.is_reserved
        and not any(addr in net for net in _V6_BLOCKED)
    )


def _is_loopback(addr: IPAddress) -> bool:
    # Only the real loopback forms; a mapped ::ffff:127.0.0.1 is not unlocked by the allowlist.
    return addr.is_loopback and not (isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped)


def _host_port_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_allowed(addr: IPAddress, host: str, port: int, allow_loopback: frozenset[str]) -> bool:
    """`check_address`, plus loopback addresses of host:port pairs named in the allowlist."""
    if check_address(addr):
        return True
    if not allow_loopback or not _is_loopback(addr):
        return False
    # Only the host as written in the URL counts: "localhost:PORT" or any other name that happens
    # to resolve to an allowlisted loopback address is refused unless it is listed itself.
    name = host.lower().rstrip(".").strip("[]")
    return _host_port_key(name, port) in allow_loopback


# A host made only of numbers in the forms inet_aton accepts (decimal, 0-octal, 0x-hex, 1 to 4
# parts): browsers and curl read these as IPv4 addresses, so "http://2130706433/" and
# "http://0x7f.1/" are 127.0.0.1 and must be judged as such, not sent to DNS.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_LEGACY_V4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a URL host denotes if it is an IP literal in any accepted spelling, else None.

    Raises FetchRefused("bad_url") for a host that looks numeric but is not a valid address
    ("999.1.1.1", "08.0.0.1"), as browsers do.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            raise FetchRefused("bad_url", f"invalid IPv6 host {host!r}") from None
    if not _LEGACY_V4.fullmatch(h):
        # WHATWG URL rule: a host whose last label is a number is an IPv4 address or invalid
        # ("1.2.3.4.5", "foo.0x10"); it never goes to DNS.
        if _NUMERIC_LABEL.fullmatch(h.rstrip(".").rpartition(".")[2]):
            raise FetchRefused("bad_url", f"invalid IPv4 host {host!r}")
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h.rstrip(".")))
    except OSError:
        raise FetchRefused("bad_url", f"invalid IPv4 host {host!r}") from None


_NXDOMAIN = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None
)


def _of_family(addrs: list[ResolveResult], family: int, host: str) -> list[ResolveResult]:
    if family in (socket.AF_INET, socket.AF_INET6):
        addrs = [a for a in addrs if a["family"] == family]
        if not addrs:
            raise FetchRefused("dns", f"{host}: no address of family {family!r}", permanent=False)
    return list(addrs)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that returns only guard-approved addresses, cached for a short while.

    Refusals are cached too (DNS failures briefly), so a shard with a thousand URLs on a dead or
    forbidden host costs one lookup, not a thousand.
    """

    _MAX_ENTRIES = 50_000
    _TRANSIENT_TTL_S = 5.0

    def __init__(
        self,
        policy: FetchPolicy,
        getaddrinfo: GetAddrInfo | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._getaddrinfo = getaddrinfo
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list[ResolveResult] | FetchRefused]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Task[list[ResolveResult]]] = {}
        self.lookups = 0  # real resolutions performed (not cache hits): for tests and stats

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """Approved addresses of host:port, or FetchRefused (blocked_address / dns / bad_url)."""
        key = (host.lower(), port)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            outcome = hit[1]
            if isinstance(outcome, FetchRefused):
                raise FetchRefused(outcome.reason, outcome.detail, permanent=outcome.permanent)
            return _of_family(outcome, family, host)
        task = self._inflight.get(key)
        if task is None:
            # The lookup is a task of its own, shared by everyone asking for the same name, so a
            # caller that gives up (deadline, cancellation) does not cancel it for the others.
            task = asyncio.ensure_future(self._lookup_and_store(key, host, port))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._lookup_done, key))
        try:
            return _of_family(await asyncio.shield(task), family, host)
        except FetchRefused as exc:  # a fresh exception per caller: tracebacks must not chain
            raise FetchRefused(exc.reason, exc.detail, permanent=exc.permanent) from None

    def _lookup_done(self, key: tuple[str, int], task: asyncio.Task[list[ResolveResult]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged as lost

    async def _lookup_and_store(self, key: tuple[str, int], host: str, port: int) -> list[ResolveResult]:
        try:
            addrs = await self._lookup(host, port)
        except FetchRefused as exc:
            self._store(key, self._policy.dns_cache_ttl_s if exc.permanent else self._TRANSIENT_TTL_S, exc)
            raise
        self._store(key, self._policy.dns_cache_ttl_s, addrs)
        return addrs

    def _store(self, key: tuple[str, int], ttl: float, outcome: list[ResolveResult] | FetchRefused) -> None:
        if len(self._cache) >= self._MAX_ENTRIES:
            now = self._clock()
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[k]
            if len(self._cache) >= self._MAX_ENTRIES:  # all fresh: drop the oldest half
                for k in list(self._cache)[: self._MAX_ENTRIES // 2]:
                    del self._cache[k]
        self._cache[key] = (self._clock() + ttl, outcome)

    async def _lookup(self, host: str, port: int) -> list[ResolveResult]:
        ip = parse_ip_host(host)
        if ip is not None:
            addrs: list[IPAddress] = [ip]
        else:
            addrs = await self._dns(host, port)
        allow = self._policy.allow_loopback
        for addr in addrs:
            if not address_allowed(addr, host, port, allow):
                raise FetchRefused("blocked_address", f"{host} resolves to non-global address {addr}")
        return [
            ResolveResult(
                hostname=host,
                host=addr.compressed,
                port=port,
                family=socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for addr in addrs
        ]

    async def _dns(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        try:
            async with asyncio.timeout(self._policy.dns_timeout_s):
                if self._getaddrinfo is not None:
                    infos = await self._getaddrinfo(host, port)
                else:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                    )
        except socket.gaierror as exc:
            # NXDOMAIN / no address: the name is gone (expired URL). Anything else (EAI_AGAIN,
            # SERVFAIL) may heal, so it is retried in a later attempt.
            raise FetchRefused("dns", f"{host}: {exc.strerror or exc}", permanent=exc.errno in _NXDOMAIN) from None
        except TimeoutError:
            raise FetchRefused("dns", f"{host}: resolver timed out", permanent=False) from None
        except UnicodeError:
            raise FetchRefused("dns", f"{host}: not a valid host name", permanent=True) from None
        seen: dict[IPAddress, None] = {}
        for family, *_rest, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                addr = ipaddress.ip_address(sockaddr[0])
            except ValueError:
                raise FetchRefused("blocked_address", f"{host} resolves to unparsable {sockaddr[0]!r}") from None
            if family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]:
                raise FetchRefused("blocked_address", f"{host} resolves to scoped address {sockaddr[0]}%{sockaddr[3]}")
            seen[addr] = None
        if not seen:
            raise FetchRefused("dns", f"{host}: no IPv4/IPv6 address", permanent=True)
        return list(seen)

    async def close(self) -> None:
        self._cache.clear()


async def resolve_and_check(
    host: str, port: int, policy: FetchPolicy, getaddrinfo: GetAddrInfo | None = None
) -> list[str]:
    """Resolve host once, without caching, and return its addresses if all of them are allowed.

    Raises FetchRefused("blocked_address") if any address is refused, FetchRefused("dns") if the
    name does not resolve.
    """
    results = await GuardedResolver(policy, getaddrinfo).resolve(host, port)
    return [r["host"] for r in results]
