"""The downloader: URLs in, bytes or reason-coded failures out.

`Fetcher.fetch(url)` never raises for anything a URL or a server can do; it returns a
`FetchResult` whose `reason` is a code from `taisu_etl.vocab.REASONS` and whose `permanent` flag
tells the fetch stage whether a later attempt could succeed (see `PERMANENCE`). Programming errors
still raise.

Each hop (the URL itself and every redirect target) goes through the same gates, in order:
scheme (http/https only) -> address guard (resolve, check every address, pin the connection to
them) -> host back-off -> robots.txt -> per-host slot (concurrency + pacing) -> global slot ->
request -> X-Robots-Tag -> body read under the byte cap.

Time limits: the per-URL deadline (`deadline_s`) covers connect, request and body of every hop
together, i.e. the time spent holding a connection slot. Name resolution has its own limit
(`dns_timeout_s`, cached per host), robots.txt its own (`robots_timeout_s`, cached per origin),
and time spent queueing politely for a busy host is not counted, so a long per-host queue never
turns into spurious timeouts. With a shared budget (`budget`), a request that gets none of its
host's budget within `shared_wait_s` ends as `host_backoff` instead of going out over the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import ResolveResult
from yarl import URL

from taisu_etl.fetch.guard import FetchRefused, GetAddrInfo, GuardedResolver, parse_ip_host
from taisu_etl.fetch.headers import find_noai, parse_retry_after
from taisu_etl.fetch.host_budget import BudgetStore, HostBudgetTimeout, SharedHostBudget
from taisu_etl.fetch.limiter import HostLimiter, HostState
from taisu_etl.fetch.policy import FetchPolicy
from taisu_etl.fetch.robots import RobotsCache

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SCHEMES = frozenset({"http", "https"})
_DRAIN_MAX = 64 * 1024  # error/redirect bodies up to this size are read so the connection is reused
_ACCEPT = "image/webp,image/jpeg,image/png,image/gif,image/*;q=0.8,*/*;q=0.5"

# Whether a later attempt could change the outcome, per reason code. Expired (the URL is gone):
# http_404, http_410 and dns when the name does not exist (NXDOMAIN).
PERMANENCE: dict[str, bool | str] = {
    "http_404": True,
    "http_410": True,
    "http_403": True,  # hotlink protection and bans rarely lift; a recheck may still revisit
    "http_4xx": "permanent, except statuses in policy.retry_statuses (408, 425)",
    "http_429": False,
    "http_5xx": False,
    "dns": "permanent for NXDOMAIN / no address, transient for temporary resolver failures",
    "connect": False,
    "timeout": False,
    "too_large": True,
    "blocked_address": True,
    "too_many_redirects": True,
    "bad_url": True,
    "robots_disallow": "permanent for a matching rule, transient when robots.txt was unreachable",
    "noai_header": True,
    "host_backoff": False,
}
_EXPIRED = frozenset({"http_404", "http_410"})


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of fetching one URL. `body` is set only when `ok`."""

    url: str  # as given
    final_url: str  # after redirects (the last URL tried, when a hop failed)
    ok: bool
    status: int | None  # HTTP status of the last response, None if none arrived
    body: bytes | None
    content_type: str | None
    reason: str | None  # None when ok, else a code from taisu_etl.vocab.REASONS
    detail: str
    permanent: bool
    retry_after_s: float | None  # server's Retry-After, or the host's remaining back-off
    redirects: tuple[str, ...]  # every Location followed, in order
    elapsed_s: float
    opt_out: dict[str, Any] | None  # evidence of a robots.txt or X-Robots-Tag opt-out

    @property
    def expired(self) -> bool:
        """The URL is gone (404, 410, NXDOMAIN): the sample moves to `expired`, not `fetch_retry`."""
        return self.reason in _EXPIRED or (self.reason == "dns" and self.permanent)

    def details(self) -> dict[str, Any]:
        """JSON-ready summary for a ledger event (everything but the body)."""
        out: dict[str, Any] = {"status": self.status, "elapsed_s": round(self.elapsed_s, 4)}
        if self.final_url != self.url:
            out["final_url"] = self.final_url
        if self.redirects:
            out["redirects"] = list(self.redirects)
        if self.detail:
            out["detail"] = self.detail
        if self.content_type:
            out["content_type"] = self.content_type
        if self.body is not None:
            out["bytes"] = len(self.body)
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        if self.opt_out is not None:
            out["opt_out"] = self.opt_out
        return out


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every connection target comes from the guard.

    aiohttp normally skips the resolver for IP-literal hosts and keeps its own DNS cache; here
    both go through `GuardedResolver`, so no code path (a redirect, a robots.txt request, a
    future caller of the session) can open a socket to an address the guard did not approve.
    """

    def __init__(self, resolver: GuardedResolver, **kwargs: Any) -> None:
        if not hasattr(aiohttp.TCPConnector, "_resolve_host"):  # pragma: no cover - aiohttp upgrade
            raise RuntimeError("this aiohttp has no TCPConnector._resolve_host; the address guard cannot be pinned")
        super().__init__(resolver=resolver, use_dns_cache=False, **kwargs)
        self._guard = resolver

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        return await self._guard.resolve(host, port, family=self._family)


class _Stop(Exception):
    """A hop ended the fetch with a failure that is not an exception from below."""

    def __init__(self, reason: str, detail: str, *, permanent: bool, status: int | None = None,
                 retry_after_s: float | None = None, opt_out: dict[str, Any] | None = None,
                 content_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.detail, self.permanent, self.status = reason, detail, permanent, status
        self.retry_after_s, self.opt_out, self.content_type = retry_after_s, opt_out, content_type


def _status_reason(status: int, retry_statuses: frozenset[int]) -> tuple[str, bool]:
    if status == 404:
        return "http_404", True
    if status == 410:
        return "http_410", True
    if status == 403:
        return "http_403", True
    if status == 429:
        return "http_429", False
    if 400 <= status < 500:
        return "http_4xx", status not in retry_statuses
    if status >= 500:
        return "http_5xx", False
    # 1xx/3xx that is not a followable redirect (300, 304, a 30x without Location)
    return "bad_url", True


def _target(url: str | URL) -> URL:
    """Parse and vet one hop's URL; canonicalises numeric IPv4 hosts ("http://2130706433/")."""
    try:
        u = url if isinstance(url, URL) else URL(url)
        scheme, host = u.scheme, u.raw_host
        port = u.port
    except (ValueError, TypeError) as exc:
        raise FetchRefused("bad_url", f"unparsable URL: {exc}") from None
    if scheme not in _SCHEMES:
        raise FetchRefused("bad_url", f"scheme {scheme or '(none)'!r} is not http(s)")
    if not host or port is None:
        raise FetchRefused("bad_url", "URL has no host")
    if port == 0 or not host.isprintable() or " " in host:
        raise FetchRefused("bad_url", f"unusable host or port in {str(u)[:200]!r}")
    # Credentials in an untrusted URL are never sent, and the fragment is client-side only.
    if u.raw_user is not None or u.raw_password is not None:
        u = u.with_user(None)
    if u.raw_fragment:
        u = u.with_fragment(None)
    ip = parse_ip_host(host)
    if ip is not None and ip.version == 4 and str(ip) != host:
        u = u.with_host(str(ip))
    return u


def _short(text: str, limit: int = 300) -> str:
    # Exception texts from HTTP parsers can quote megabytes of what the server sent; the ledger
    # keeps the first line's gist only.
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _aiter(urls: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(urls, AsyncIterable):
        async for u in urls:
            yield u
    else:
        for u in urls:
            yield u


class Fetcher:
    """One HTTP session, one resolver cache, one robots cache and one host limiter for many URLs.

        async with Fetcher(FetchPolicy()) as f:
            async for result in f.fetch_many(urls):
                ...

    `getaddrinfo` replaces the system resolver (tests, synthetic webs); its answers still go
    through the guard. `limiter` may be shared between fetchers in one process. `budget`: where
    the per-host limits are shared with every other fetch process of the deployment (the ledger,
    `taisu_etl.db.host_budget.LedgerHostBudget`); without it they hold for this process only.
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        getaddrinfo: GetAddrInfo | None = None,
        limiter: HostLimiter | None = None,
        budget: BudgetStore | None = None,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self.resolver = GuardedResolver(self.policy, getaddrinfo)
        if limiter is not None and budget is not None:
            raise ValueError("give the budget to the shared limiter, not to the Fetcher")
        self.limiter = limiter or HostLimiter(
            self.policy, budget=SharedHostBudget(budget, self.policy) if budget is not None else None
        )
        self._own_limiter = limiter is None
        self.robots = RobotsCache(self.policy, self._fetch_robots, on_crawl_delay=self.limiter.set_crawl_delay)
        self._session: aiohttp.ClientSession | None = None
        self._global: asyncio.Semaphore | None = None

    async def __aenter__(self) -> Fetcher:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is not None:
            return
        p = self.policy
        connector = GuardedConnector(
            self.resolver,
            # Our own semaphores bound the requests in flight; this is only a backstop.
            limit=p.concurrency + 8,
            limit_per_host=0,
            keepalive_timeout=15,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": p.user_agent, "Accept": _ACCEPT, "Accept-Encoding": "identity"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # no state carried between sites
            auto_decompress=False,  # the byte cap counts bytes on the wire, never inflated ones
            trust_env=False,  # a proxy from the environment would bypass the address guard
            raise_for_status=False,
        )
        self._global = asyncio.Semaphore(p.concurrency)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_limiter:
            await self.limiter.close()

    # --- public API -------------------------------------------------------------------------

    async def fetch(self, url: str) -> FetchResult:
        """Fetch one URL under the policy's deadline, byte cap, guard, robots and noai rules."""
        p = self.policy
        return await self._run(url, robots=p.honour_robots, noai=p.honour_noai,
                               max_bytes=p.max_bytes, deadline=p.deadline_s, truncate=False)

    async def fetch_many(
        self, urls: Iterable[str] | AsyncIterable[str], *, window: int | None = None
    ) -> AsyncIterator[FetchResult]:
        """Fetch many URLs concurrently; results come in completion order (match them by `url`).

        At most `window` URLs are in progress at once (default: 4 x concurrency, at least 256):
        enough that URLs of other hosts overtake a host that is at its own limit, bounded so
        a million-URL shard does not become a million tasks.
        """
        limit = window or max(4 * self.policy.concurrency, 256)
        done: asyncio.Queue[asyncio.Task[FetchResult]] = asyncio.Queue()
        pending: set[asyncio.Task[FetchResult]] = set()
        source = _aiter(urls)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        url = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    task = asyncio.ensure_future(self.fetch(url))
                    task.add_done_callback(done.put_nowait)
                    pending.add(task)
                if not pending:
                    return
                task = await done.get()
                pending.discard(task)
                yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def domain_states(self) -> list[HostState]:
        """Back-off, failures, crawl delay and robots.txt evidence per host, for `domain_state`."""
        robots = self.robots.evidence()
        states = {s.host: s for s in self.limiter.snapshot()}
        for host, evidence in robots.items():
            s = states.get(host)
            states[host] = HostState(
                host=host,
                backoff_until=s.backoff_until if s else None,
                failures=s.failures if s else 0,
                crawl_delay_s=s.crawl_delay_s if s else evidence.get("crawl_delay_s"),
                robots=evidence,
            )
        return sorted(states.values(), key=lambda s: s.host)

    def restore_domain_states(self, states: Iterable[HostState]) -> None:
        """Resume back-off from persisted state (robots.txt is always fetched afresh)."""
        self.limiter.restore(states)

    # --- internals --------------------------------------------------------------------------

    async def _fetch_robots(self, robots_url: str) -> FetchResult:
        p = self.policy
        return await self._run(robots_url, robots=False, noai=False, max_bytes=p.robots_max_bytes,
                               deadline=p.robots_timeout_s, truncate=True)

    async def _run(self, url: str, *, robots: bool, noai: bool, max_bytes: int, deadline: float,
                   truncate: bool) -> FetchResult:
        if self._session is None or self._global is None:
            raise RuntimeError("Fetcher is not open: use `async with Fetcher(...)`")
        p = self.policy
        t0 = time.monotonic()
        redirects: list[str] = []
        current = url
        host_key: str | None = None
        budget = deadline

        def failure(reason: str, detail: str, permanent: bool, *, status: int | None = None,
                    retry_after_s: float | None = None, opt_out: dict[str, Any] | None = None,
                    content_type: str | None = None) -> FetchResult:
            return FetchResult(url=url, final_url=current, ok=False, status=status, body=None,
                               content_type=content_type, reason=reason, detail=_short(detail),
                               permanent=permanent, retry_after_s=retry_after_s,
                               redirects=tuple(redirects), elapsed_s=time.monotonic() - t0,
                               opt_out=opt_out)

        try:
            target = _target(url)
            current = str(target)
            seen = {current}
            while True:
                host_key = (target.raw_host or "").lower()
                await self.resolver.resolve(target.raw_host or "", target.port or 0)
                wait = self.limiter.paused_for(host_key)
                if wait > 0:
                    return failure("host_backoff", f"{host_key} is backing off for {wait:.1f}s", False,
                                   retry_after_s=wait)
                if robots:
                    verdict = await self.robots.check(target)
                    if not verdict.allowed and verdict.temporary and verdict.evidence.get("error") == "host_backoff":
                        # robots.txt itself waited out a back-off or the shared budget: not an attempt at the URL
                        return failure("host_backoff", f"{host_key}: robots.txt not read yet (host backing off or busy)", False,
                                       retry_after_s=self.policy.robots_error_ttl_s)
                    if not verdict.allowed:
                        why = ("robots.txt unreachable; assuming disallow until it can be read"
                               if verdict.temporary else "robots.txt disallows this URL")
                        return failure("robots_disallow", why, not verdict.temporary, opt_out=verdict.evidence)
                async with self.limiter.slot(host_key), self._global:
                    if self.limiter.paused_for(host_key) > 0:  # paused while we queued
                        wait = self.limiter.paused_for(host_key)
                        return failure("host_backoff", f"{host_key} is backing off for {wait:.1f}s", False,
                                       retry_after_s=wait)
                    started = time.monotonic()
                    try:
                        async with asyncio.timeout(budget):
                            hop = await self._hop(target, host_key, max_bytes=max_bytes, truncate=truncate, noai=noai)
                    finally:
                        budget -= time.monotonic() - started
                if isinstance(hop, FetchResult):
                    return FetchResult(url=url, final_url=current, ok=True, status=hop.status, body=hop.body,
                                       content_type=hop.content_type, reason=None, detail="", permanent=False,
                                       retry_after_s=None, redirects=tuple(redirects),
                                       elapsed_s=time.monotonic() - t0, opt_out=None)
                # a redirect: vet the next hop before anything else touches it
                if len(redirects) >= p.max_redirects:
                    return failure("too_many_redirects", f"more than {p.max_redirects} redirects", True,
                                   status=hop.status)
                nxt = _target(hop.location)
                current = str(nxt)
                redirects.append(current)
                if current in seen:
                    return failure("too_many_redirects", f"redirect loop back to {current}", True, status=hop.status)
                seen.add(current)
                target = nxt
        except FetchRefused as exc:
            return failure(exc.reason, exc.detail, exc.permanent)
        except HostBudgetTimeout as exc:
            return failure("host_backoff", str(exc), False, retry_after_s=exc.waited_s)
        except _Stop as stop:
            return failure(stop.reason, stop.detail, stop.permanent, status=stop.status,
                           retry_after_s=stop.retry_after_s, opt_out=stop.opt_out, content_type=stop.content_type)
        except TimeoutError as exc:
            self._transient_failure(host_key)
            if isinstance(exc, aiohttp.ServerTimeoutError):
                return failure("timeout", f"connect timed out after {p.connect_timeout_s:g}s", False)
            return failure("timeout", f"deadline of {deadline:g}s passed", False)
        except aiohttp.ClientConnectorDNSError as exc:  # only if the guard's answer expired mid-flight
            return failure("dns", str(exc), False)
        except aiohttp.ClientConnectorError as exc:
            self._transient_failure(host_key)
            return failure("connect", str(exc.os_error or exc), False)
        except aiohttp.InvalidURL as exc:
            return failure("bad_url", f"invalid URL: {exc}", True)
        except (aiohttp.ClientError, OSError) as exc:
            # reset, disconnected mid-body, malformed HTTP: the conversation failed
            self._transient_failure(host_key)
            return failure("connect", f"{type(exc).__name__}: {exc}", False)

    def _transient_failure(self, host_key: str | None) -> None:
        if host_key:
            self.limiter.record_failure(host_key, throttled=False)

    async def _hop(self, target: URL, host_key: str, *, max_bytes: int, truncate: bool,
                   noai: bool) -> FetchResult | _Redirect:
        assert self._session is not None
        p = self.policy
        async with self._session.get(target, allow_redirects=False) as resp:
            status = resp.status
            ctype = resp.headers.get("Content-Type")
            if status in _REDIRECT_STATUSES and "Location" in resp.headers:
                self.limiter.record_success(host_key)
                await _drain(resp)
                try:
                    location = target.join(URL(resp.headers["Location"]))
                except (ValueError, TypeError) as exc:
                    raise FetchRefused("bad_url", f"unparsable Location: {exc}") from None
                return _Redirect(status, location)
            if not 200 <= status < 300:
                reason, permanent = _status_reason(status, p.retry_statuses)
                retry_after = None
                if status in p.throttle_statuses:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    if retry_after is not None:
                        retry_after = min(retry_after, p.max_retry_after_s)
                    self.limiter.record_failure(host_key, throttled=True, retry_after_s=retry_after)
                elif status >= 500:
                    self.limiter.record_failure(host_key, throttled=False)
                else:
                    self.limiter.record_success(host_key)
                await _drain(resp)
                raise _Stop(reason, f"HTTP {status}", permanent=permanent, status=status,
                            retry_after_s=retry_after, content_type=ctype)
            self.limiter.record_success(host_key)
            if noai:
                tag = find_noai(resp.headers.getall("X-Robots-Tag", ()), p.robots_agent)
                if tag is not None:
                    raise _Stop("noai_header", f"X-Robots-Tag: {tag.directive}", permanent=True, status=status,
                                content_type=ctype,
                                opt_out={"source": "X-Robots-Tag", "directive": tag.directive,
                                         "agent": tag.agent, "header": tag.header, "url": str(target)})
            length = resp.content_length
            if length is not None and length > max_bytes and not truncate:
                raise _Stop("too_large", f"Content-Length {length} > cap {max_bytes}", permanent=True,
                            status=status, content_type=ctype)
            # Count what actually arrives: Content-Length may be absent or wrong.
            chunks: list[bytes] = []
            received = 0
            stream = resp.content
            while True:
                chunk = await stream.readany()
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    if truncate:
                        chunks.append(chunk[: len(chunk) - (received - max_bytes)])
                        break
                    raise _Stop("too_large", f"more than {max_bytes} bytes", permanent=True,
                                status=status, content_type=ctype)
                chunks.append(chunk)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return FetchResult(url=str(target), final_url=str(target), ok=True, status=status, body=body,
                               content_type=ctype, reason=None, detail="", permanent=False, retry_after_s=None,
                               redirects=(), elapsed_s=0.0, opt_out=None)


@dataclass(frozen=True, slots=True)
class _Redirect:
    status: int
    location: URL


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a small, announced body so the keep-alive connection can serve the next request;
    anything else is left unread and the connection is closed on release."""
    length = resp.content_length
    if length is not None and 0 < length <= _DRAIN_MAX:
        try:
            await resp.read()
        except (aiohttp.ClientError, OSError):
            pass  # the response is already decided; a broken body only costs the connection


__all__ = ["FetchResult", "Fetcher", "GuardedConnector", "PERMANENCE"]
