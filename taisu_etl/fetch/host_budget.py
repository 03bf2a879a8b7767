"""Per-host limits that hold across every fetch process of a deployment, not per process.

`per_host_rate` and `per_host_concurrency` are promises to a host. Kept by each process alone, N
mapped fetch tasks (or Celery workers on several machines) send a host N times the polite rate; so
the budget lives where every worker already meets: the ledger (`taisu_etl.db.host_budget`).

- Rate: a host has one shared `next_slot`. A process reserves a block of k slots in one atomic
  statement (`start = max(next_slot, now)`, `next_slot = start + k * interval`, on the database's
  clock) and paces its k requests from `start` itself; a slot it cannot use in time is dropped,
  never used late, so the union of every process's requests is one paced stream. (So when one
  process's units cannot keep up with the host's rate, the host gets less than the limit, never more.)
- Concurrency: units leased with an expiry. A process holds `units` of a host's
  `per_host_concurrency`; the sum of live grants stays within the limit (decided under the host
  row's lock), a process asks for no more than its fair share while others want some too, and
  gives its units back when its queue for the host has stayed empty to the end of a share window
  (about a second). A crashed process's grant expires.

Everything a process needs is asked for in one exchange per tick for all its hosts at once, so
the ledger sees one short transaction per tick, not one per request or per host. A request that
cannot get budget within `shared_wait_s` fails as `host_backoff` (retried later) rather than go
out over the limit. Back-off after 429/503 stays per process (`HostLimiter`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from taisu_etl.fetch.policy import FetchPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """What one process wants of one host in an exchange."""

    host: str
    want: int  # units it could use now (0 with floor 0: give the grant back)
    floor: int  # units in use now, which cannot be given back yet
    limit: int  # per_host_concurrency
    slots: int  # rate slots to reserve (0 = none)
    interval: float  # seconds between two slots of this host (rate or Crawl-delay)


@dataclass(frozen=True, slots=True)
class BudgetGrant:
    host: str
    allowed: int  # units the process may fill from now on
    units: int  # units recorded for it: max(floor, allowed)
    slots: int  # rate slots reserved (0 = none)
    slot_start: float | None  # database-clock time of the first reserved slot


@dataclass(frozen=True, slots=True)
class BudgetAnswer:
    now: float  # the database's clock during the exchange (Unix seconds)
    grants: tuple[BudgetGrant, ...]


class BudgetStore(Protocol):
    """Where the shared budget lives (`taisu_etl.db.host_budget.LedgerHostBudget`)."""

    def exchange(self, owner: str, asks: Sequence[BudgetAsk], ttl_s: float) -> BudgetAnswer:
        """In one transaction: renew all of `owner`'s grants for `ttl_s`, then answer `asks`."""
        ...

    def release_all(self, owner: str) -> None:
        """Give back every grant of `owner` (a fetcher closing)."""
        ...


class HostBudgetTimeout(Exception):
    """A request waited `shared_wait_s` for the shared budget of its host and got none."""

    def __init__(self, host: str, waited_s: float, what: str) -> None:
        super().__init__(f"{host}: no shared {what} budget within {waited_s:g}s (other workers are using the host's limit)")
        self.host, self.waited_s = host, waited_s


def default_owner() -> str:
    """A lease owner token naming this process (and this fetcher: two in one process are two owners).

    The leases' token format (host, pid, process start), so that a worker on the same machine can
    prove a killed fetcher gone and free its units at once instead of waiting out their expiry."""
    from taisu_etl.db.leases import LeaseOwner  # the token format only; the fetch package writes no ledger rows

    return LeaseOwner.current(f"fetch-budget.{secrets.token_hex(4)}").token


@dataclass(slots=True, eq=False)
class _Share:
    """This process's part of one host's budget."""

    allowed: int = 0  # units it may fill
    recorded: int = 0  # units the ledger holds for it (>= in_use)
    in_use: int = 0
    demand: int = 0  # requests between enter and exit
    unpaced: int = 0  # requests that have not taken a rate slot yet
    interval: float = 0.0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)  # for a unit, FIFO
    slots: deque[float] = field(default_factory=deque)  # reserved slot times, local clock
    slot_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    dropped: int = 0  # slots that passed unused
    peak: int = 0  # most requests between enter and exit in this share window
    peak_before: int = 0  # ... and in the window before it


class SharedHostBudget:
    """One process's view of the shared budget: the local pacer asks it for units and slots.

    `enter(host, ...)` returns when the request may go out (a unit held, its slot reached) and
    raises HostBudgetTimeout after `policy.shared_wait_s`; every `enter` is paired with `exit`.
    """

    def __init__(
        self,
        store: BudgetStore,
        policy: FetchPolicy,
        *,
        owner: str | None = None,
        tick_s: float = 0.01,
        poll_s: float = 0.25,
        share_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.policy = policy
        self.owner = owner or default_owner()
        self.tick_s, self.poll_s = tick_s, poll_s
        # A host's units are sized to its peak demand over the last one or two `share_s` windows,
        # a process holding several units of a host asks again once per window, so another
        # process that wants the host gets its fair share within about `share_s`, and a host whose
        # queue has emptied gives its units back when the window ends.
        self.share_s = share_s
        # A request started under a grant must end before the grant can lapse: no new request
        # starts within `hold_s` of the lapse, and renewals come every ttl/2.
        self.hold_s = max(policy.deadline_s, policy.robots_timeout_s) + 1.0
        self.ttl_s = max(60.0, 3 * self.hold_s)
        self.exchanges = 0  # transactions run, for tests and benchmarks
        self._clock = clock
        self._hosts: dict[str, _Share] = {}
        self._dirty: set[str] = set()
        self._retry_at: dict[str, float] = {}  # host -> when an unanswered ask is repeated
        self._force: set[str] = set()  # hosts asked again although nothing changed (share check)
        self._window_at = clock()  # when the current share window began
        self._valid_until = -math.inf  # local time our grants lapse unless renewed
        self._hold_ewma = 0.05  # seconds a request holds its unit: sizes slot blocks
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._closing = False

    # --- the pacer's side -------------------------------------------------------------------

    async def enter(self, host: str, interval: float, burst: int) -> None:
        self._start()
        s = self._hosts.get(host)
        if s is None:
            s = self._hosts[host] = _Share()
        s.demand += 1
        if s.demand > s.peak:
            s.peak = s.demand
        s.unpaced += 1
        deadline = self._clock() + self.policy.shared_wait_s
        unit = paced = False
        try:
            await self._unit(host, s, deadline)
            unit = True
            wait = 0.0
            if interval > 0:
                s.interval = interval
                wait = await self._slot(host, s, interval, burst, deadline)
            s.unpaced -= 1
            paced = True
            if wait > 1e-6:
                await asyncio.sleep(wait)
        except BaseException:
            if not paced:
                s.unpaced -= 1
            if unit:
                s.in_use -= 1
                self._wake_units(s)
            s.demand -= 1
            self._mark(host)
            raise

    def exit(self, host: str, held_s: float) -> None:
        s = self._hosts[host]
        s.in_use -= 1
        s.demand -= 1
        self._hold_ewma += 0.05 * (held_s - self._hold_ewma)
        self._wake_units(s)
        # A host whose queue has emptied keeps its units until the share window ends (then they
        # go back): its requests leave to decode and store and come back within milliseconds.
        if s.recorded > max(s.in_use, s.allowed):
            self._mark(host)

    async def _unit(self, host: str, s: _Share, deadline: float) -> None:
        if not s.waiters and s.in_use < s.allowed and self._fresh():
            s.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.waiters.append(fut)
        self._mark(host)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():  # handed a unit as we gave up: pass it on
                s.in_use -= 1
                self._wake_units(s)
            else:
                fut.cancel()
                try:
                    s.waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise HostBudgetTimeout(host, self.policy.shared_wait_s, "concurrency") from None
            raise

    async def _slot(self, host: str, s: _Share, interval: float, burst: int, deadline: float) -> float:
        """Take this request's rate slot; returns how long to wait for it."""
        # A slot is usable from (slot - burst allowance) until shortly after it: used later it
        # would land in another process's slots and add up to more than the rate.
        grace = min(interval, 0.05)
        while True:
            now = self._clock()
            while s.slots and s.slots[0] + grace < now:
                s.slots.popleft()
                s.dropped += 1
            if s.slots:
                at = s.slots.popleft()
                if len(s.slots) < s.unpaced - 1:
                    self._mark(host)  # the next block is asked for while this one is used
                return at - (burst - 1) * interval - now
            if now >= deadline:
                raise HostBudgetTimeout(host, self.policy.shared_wait_s, "rate")
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            s.slot_waiters.append(fut)
            self._mark(host)
            try:
                async with asyncio.timeout(deadline - now):
                    await fut
            except TimeoutError:
                raise HostBudgetTimeout(host, self.policy.shared_wait_s, "rate") from None
            finally:
                if fut in s.slot_waiters:
                    s.slot_waiters.remove(fut)

    def _fresh(self) -> bool:
        return self._clock() + self.hold_s < self._valid_until

    def _wake_units(self, s: _Share) -> None:
        if not self._fresh():
            return
        while s.waiters and s.in_use < s.allowed:
            fut = s.waiters.popleft()
            if not fut.done():
                s.in_use += 1
                fut.set_result(None)

    def _mark(self, host: str) -> None:
        self._dirty.add(host)
        if self._wake is not None:
            self._wake.set()

    # --- the exchange loop ------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="host-budget")
            self._task.add_done_callback(_log_death)

    async def close(self) -> None:
        """Stop exchanging and give every grant back (they would expire anyway)."""
        if self._task is None:
            return
        # Let an exchange in flight finish first, or it could record grants after the release.
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._task.cancel()
        except Exception:  # already logged by _log_death
            pass
        self._task = None
        try:
            await asyncio.to_thread(self.store.release_all, self.owner)
        except Exception as exc:  # the grants lapse by themselves within ttl_s
            log.warning("could not give back the shared host budget of %s: %s", self.owner, exc)

    async def _run(self) -> None:
        assert self._wake is not None
        failures = 0
        while not self._closing:
            now = self._clock()
            due = [h for h, at in self._retry_at.items() if at <= now]
            for h in due:
                del self._retry_at[h]
                self._dirty.add(h)
            if now >= self._window_at + self.share_s:
                self._next_window(now)
            renew_at = self._valid_until - self.ttl_s / 2 if any(s.recorded for s in self._hosts.values()) else math.inf
            if not (self._dirty - self._retry_at.keys()) and renew_at > now:
                holding = any(s.recorded for s in self._hosts.values())
                wake_at = min([renew_at, *self._retry_at.values(), self._window_at + self.share_s if holding else math.inf])
                try:
                    async with asyncio.timeout(None if wake_at == math.inf else max(0.0, wake_at - now)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                continue
            self._wake.clear()
            await asyncio.sleep(self.tick_s)  # let the other hosts' requests join this exchange
            if self._closing:
                return
            asks = self._asks()
            if not asks and self._clock() < renew_at:
                continue
            sent = self._clock()
            try:
                answer = await asyncio.to_thread(self.store.exchange, self.owner, asks, self.ttl_s)
            except Exception as exc:  # the ledger away or busy: waiters wait (bounded), nothing goes out unbudgeted
                if self._failing_since is None:
                    self._failing_since = sent
                    log.warning("shared host budget unavailable (%s); requests wait up to %gs for it",
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.policy.shared_wait_s)
                retry = self._clock() + self.poll_s
                for a in asks:
                    self._retry_at[a.host] = retry
                failures += 1
                await asyncio.sleep(min(5.0, self.poll_s * 2 ** min(failures - 1, 5)))
                continue
            failures = 0
            if self._failing_since is not None:
                log.warning("shared host budget available again")
                self._failing_since = None
            self.exchanges += 1
            self._apply(answer, asks, sent, self._clock())

    def _next_window(self, now: float) -> None:
        """Start a new share window: peaks roll over, and the hosts this process holds several
        units of are asked for again, so their grants follow the fair share as others come and go."""
        self._window_at = now
        for host, s in self._hosts.items():
            s.peak_before, s.peak = s.peak, s.demand
            if s.recorded and s.demand == 0:
                self._dirty.add(host)  # its queue is empty: the units go back
            elif s.recorded > 1:
                self._force.add(host)
                self._dirty.add(host)

    def _asks(self) -> list[BudgetAsk]:
        limit = self.policy.per_host_concurrency
        asks: list[BudgetAsk] = []
        for host in sorted(self._dirty):
            if host in self._retry_at:  # asked recently and nothing changed since: wait for the poll
                continue
            self._dirty.discard(host)
            forced = host in self._force
            self._force.discard(host)
            s = self._hosts.get(host)
            if s is None:
                continue
            # While the host has requests waiting or in flight, ask for its recent peak, not for
            # this instant's count: a fetch worker leaves the host's queue to decode and store
            # each image and comes back, so the instantaneous demand swings below the peak all
            # the time. Sized to it, the grant shrank at each dip and the requests that came
            # back waited for the next exchange (measured: one loopback host, 64 requests in
            # flight, two thirds of all requests waited, 29 on average at any moment, and the
            # stage ran at 0.6 of its unshared speed). With no request left, the units go back.
            want = max(s.in_use, min(limit, max(s.demand, s.peak, s.peak_before))) if s.demand > 0 else s.in_use
            # Until the answer comes, fill no more than the ask: the floor covers every unit that
            # can be in use meanwhile, so the ledger never records fewer than are open.
            s.allowed = min(s.allowed, want)
            floor = max(s.in_use, s.allowed)
            slots = 0
            short = s.unpaced - len(s.slots)
            if s.interval > 0 and short > 0:
                block = max(1, int(self.policy.shared_block_s / s.interval))
                # no more than the units can use within the block (slow hosts would waste them)
                usable = max(1, math.ceil(max(s.allowed, 1) * self.policy.shared_block_s / max(self._hold_ewma, 1e-3)))
                # a fresh host needs robots.txt and the image: two slots in one exchange
                slots = min(block, usable, max(short, 2))
            needs = (forced or (s.waiters and s.in_use >= s.allowed) or slots or want != s.recorded
                     or s.recorded > max(s.in_use, s.allowed))
            if not needs:
                continue
            asks.append(BudgetAsk(host=host, want=want, floor=floor, limit=limit, slots=slots, interval=s.interval))
            if len(asks) >= 1000:
                break
        return asks

    def _apply(self, answer: BudgetAnswer, asks: Sequence[BudgetAsk], sent: float, received: float) -> None:
        was_fresh = self._fresh()
        # Conservative both ways: the database's "now" lies between `sent` and `received`, so a
        # grant is taken to lapse `ttl` after `sent` and a slot to start (start - now) after `received`.
        self._valid_until = sent + self.ttl_s
        intervals = {a.host: a.interval for a in asks}
        wanted = {a.host: a.want for a in asks}
        for g in answer.grants:
            s = self._hosts.get(g.host)
            if s is None:
                continue
            s.allowed, s.recorded = g.allowed, g.units
            if g.slots and g.slot_start is not None:
                first = received + (g.slot_start - answer.now)
                step = intervals[g.host]
                s.slots.extend(first + i * step for i in range(g.slots))
            self._wake_units(s)
            for fut in s.slot_waiters:
                if not fut.done():
                    fut.set_result(None)
            short_of_units = bool(s.waiters) and s.in_use >= s.allowed
            if short_of_units and g.allowed >= wanted[g.host] and g.allowed < self.policy.per_host_concurrency:
                # Granted all it asked for; more requests came while the exchange ran: ask for
                # them at the next tick, not after a poll (no other process stood in the way).
                self._mark(g.host)
            elif short_of_units or (s.slot_waiters and not s.slots):
                self._retry_at[g.host] = received + self.poll_s  # not enough for now: ask again later
            if s.demand == 0 and s.in_use == 0 and s.recorded == 0:
                del self._hosts[g.host]
        if not was_fresh:
            for s in self._hosts.values():
                self._wake_units(s)


def _log_death(task: asyncio.Task[None]) -> None:
    # Without the loop no budget comes: requests end as host_backoff after shared_wait_s. Say why.
    if not task.cancelled() and task.exception() is not None:
        log.error("the shared host budget stopped", exc_info=task.exception())
