"""Per-host politeness: a concurrency cap, a paced request rate and back-off after throttling.

One `HostLimiter` is shared by every request a `Fetcher` makes (images, redirect hops and
robots.txt), so a host sees at most `per_host_concurrency` connections from us and at most
`per_host_rate` requests per second, whatever mix of URLs a shard holds.

Back-off: a 429/503 pauses the host until its Retry-After (or an exponential delay when there is
none); `host_failure_threshold` consecutive transient failures (timeouts, refused connections,
5xx) pause it exponentially too; any completed response clears the failure count. The state is
exported as `HostState` rows (`snapshot`) so a later stage can persist it to the ledger's
`domain_state` table and `restore` it in the next attempt.

Shared mode (`budget`, see `taisu_etl.fetch.host_budget`): the concurrency units and rate slots
come from a budget every fetch process of the deployment shares, and this limiter only paces the
slots it was given; back-off after 429/503 and failures stays per process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from taisu_etl.fetch.host_budget import SharedHostBudget
from taisu_etl.fetch.policy import FetchPolicy


@dataclass(frozen=True, slots=True)
class HostState:
    """What the crawler knows about one host, in a form fit for the `domain_state` table."""

    host: str
    backoff_until: float | None  # Unix time before which the host is not contacted; None = free
    failures: int  # consecutive transient failures
    crawl_delay_s: float | None = None  # from robots.txt, as honoured (capped)
    robots: dict[str, Any] | None = field(default=None)  # evidence of the cached robots.txt


class _Host:
    __slots__ = ("sem", "active", "tat", "interval", "burst", "paused_until", "failures", "crawl_delay")

    def __init__(self, concurrency: int, interval: float, burst: int) -> None:
        self.sem = asyncio.Semaphore(concurrency)
        self.active = 0  # holders and waiters of the semaphore: the entry is kept while > 0
        self.tat = 0.0  # GCRA theoretical arrival time (monotonic clock)
        self.interval = interval
        self.burst = burst
        self.paused_until = 0.0  # monotonic clock
        self.failures = 0
        self.crawl_delay: float | None = None


class HostLimiter:
    """Concurrency, pacing and back-off per host name (ports share their host's budget)."""

    _PRUNE_AT = 10_000

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
        budget: SharedHostBudget | None = None,
    ) -> None:
        self._policy = policy
        self.budget = budget
        self._interval = 1.0 / policy.per_host_rate if policy.per_host_rate else 0.0
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._hosts: dict[str, _Host] = {}

    def _get(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            if len(self._hosts) >= self._PRUNE_AT:
                self._prune()
            h = _Host(self._policy.per_host_concurrency, self._interval, self._policy.per_host_burst)
            self._hosts[host] = h
        return h

    def _prune(self) -> None:
        # Forget hosts with nothing to remember: idle, not paused, no failures, pacing caught up.
        now = self._clock()
        for name in [
            n for n, h in self._hosts.items()
            if h.active == 0 and h.paused_until <= now and h.failures == 0 and h.tat <= now and h.crawl_delay is None
        ]:
            del self._hosts[name]

    def slot(self, host: str) -> _Slot:
        """Async context manager: a concurrency slot on `host`, entered at the paced time."""
        return _Slot(self, self._get(host), host)

    async def close(self) -> None:
        """Give back the shared budget, if any (the limiter is unusable afterwards)."""
        if self.budget is not None:
            await self.budget.close()

    async def _pace(self, h: _Host) -> None:
        if h.interval <= 0:
            return
        # GCRA: a quiet host may take `burst` requests at once, then one per interval. The slot is
        # reserved before sleeping so concurrent callers queue up behind each other.
        now = self._clock()
        tat = max(h.tat, now)
        wait = tat - now - (h.burst - 1) * h.interval
        h.tat = tat + h.interval
        if wait > 1e-6:  # float noise from summing intervals is not worth a trip round the loop
            await self._sleep(wait)

    def paused_for(self, host: str) -> float:
        """Seconds until `host` may be contacted again (0.0 when it is not backing off)."""
        h = self._hosts.get(host)
        if h is None:
            return 0.0
        return max(0.0, h.paused_until - self._clock())

    def record_success(self, host: str) -> None:
        h = self._hosts.get(host)
        if h is not None:
            h.failures = 0

    def record_failure(self, host: str, *, throttled: bool, retry_after_s: float | None = None) -> float:
        """Count a transient failure; return the pause it caused in seconds (0.0 if none).

        `throttled` is a 429/503: the host asked us to slow down, so it is paused at once, for
        Retry-After when given. Other failures pause it only from the threshold on.
        """
        p = self._policy
        h = self._get(host)
        h.failures += 1
        if throttled:
            steps = h.failures
        elif h.failures >= p.host_failure_threshold:
            steps = h.failures - p.host_failure_threshold + 1
        else:
            return 0.0
        if retry_after_s is not None:
            pause = min(retry_after_s, p.max_retry_after_s)
        else:
            pause = min(p.backoff_max_s, p.backoff_base_s * 2 ** min(steps - 1, 62))
        h.paused_until = max(h.paused_until, self._clock() + pause)
        return pause

    def set_crawl_delay(self, host: str, delay_s: float | None) -> None:
        """Honour a robots.txt Crawl-delay (capped by policy): at least that long between requests."""
        h = self._get(host)
        if delay_s is None or delay_s <= 0:
            h.crawl_delay = None
            h.interval, h.burst = self._interval, self._policy.per_host_burst
            return
        h.crawl_delay = min(delay_s, self._policy.max_crawl_delay_s)
        h.interval, h.burst = max(self._interval, h.crawl_delay), 1

    def snapshot(self) -> list[HostState]:
        """The hosts worth persisting: those backing off, failing or with a crawl delay."""
        now, wall = self._clock(), self._wall()
        out = []
        for name, h in self._hosts.items():
            paused = h.paused_until > now
            if paused or h.failures or h.crawl_delay is not None:
                out.append(HostState(
                    host=name,
                    backoff_until=wall + (h.paused_until - now) if paused else None,
                    failures=h.failures,
                    crawl_delay_s=h.crawl_delay,
                ))
        return out

    def restore(self, states: Iterable[HostState]) -> None:
        """Load back-off state persisted by an earlier attempt (crawl delays come from robots.txt)."""
        now, wall = self._clock(), self._wall()
        for s in states:
            h = self._get(s.host)
            h.failures = max(h.failures, s.failures)
            if s.backoff_until is not None and s.backoff_until > wall:
                h.paused_until = max(h.paused_until, now + (s.backoff_until - wall))


class _Slot:
    """`async with limiter.slot(host):` — hand-written rather than @asynccontextmanager because
    it runs once per request on the hot path."""

    __slots__ = ("_limiter", "_h", "_host", "_entered")

    def __init__(self, limiter: HostLimiter, h: _Host, host: str) -> None:
        self._limiter = limiter
        self._h = h
        self._host = host
        self._entered = 0.0

    async def __aenter__(self) -> None:
        h = self._h
        h.active += 1
        budget = self._limiter.budget
        if budget is not None:
            try:
                await budget.enter(self._host, h.interval, h.burst)
            except BaseException:
                h.active -= 1
                raise
            self._entered = self._limiter._clock()
            return
        try:
            await h.sem.acquire()
        except BaseException:
            h.active -= 1
            raise
        try:
            await self._limiter._pace(h)
        except BaseException:
            h.sem.release()
            h.active -= 1
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        budget = self._limiter.budget
        if budget is not None:
            budget.exit(self._host, self._limiter._clock() - self._entered)
            self._h.active -= 1
            return
        self._h.sem.release()
        self._h.active -= 1
