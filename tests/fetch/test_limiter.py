"""HostLimiter with a fake clock: pacing, back-off, persistence. No network, no real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from taisu_etl.fetch import FetchPolicy, HostLimiter, HostState
from tests.fetch.support import run


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_offset = 1_700_000_000.0 - 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(policy: FetchPolicy) -> tuple[HostLimiter, FakeTime]:
    t = FakeTime()
    return HostLimiter(policy, clock=t.clock, wall=t.wall, sleep=t.sleep), t


def test_pacing_allows_a_burst_then_one_request_per_interval() -> None:
    limiter, t = make(FetchPolicy(per_host_rate=10.0, per_host_burst=3))

    async def scenario() -> None:
        for _ in range(6):
            async with limiter.slot("a.example"):
                pass

    run(scenario())
    # three at once, then 0.1 s apart (each sleep brings the clock to the next slot)
    assert len(t.sleeps) == 3
    assert all(s == pytest.approx(0.1) for s in t.sleeps)


def test_hosts_are_paced_independently() -> None:
    limiter, t = make(FetchPolicy(per_host_rate=1.0, per_host_burst=1))

    async def scenario() -> None:
        for host in ("a.example", "b.example", "c.example"):
            async with limiter.slot(host):
                pass

    run(scenario())
    assert t.sleeps == []


def test_unlimited_rate_never_sleeps() -> None:
    limiter, t = make(FetchPolicy(per_host_rate=None))

    async def scenario() -> None:
        for _ in range(50):
            async with limiter.slot("a.example"):
                pass

    run(scenario())
    assert t.sleeps == []


def test_crawl_delay_spaces_requests_and_is_capped() -> None:
    limiter, t = make(FetchPolicy(per_host_rate=100.0, max_crawl_delay_s=30.0))
    limiter.set_crawl_delay("slow.example", 2.0)
    limiter.set_crawl_delay("huge.example", 3600.0)

    async def scenario() -> None:
        for _ in range(3):
            async with limiter.slot("slow.example"):
                pass

    run(scenario())
    assert t.sleeps == [pytest.approx(2.0), pytest.approx(2.0)]
    states = {s.host: s for s in limiter.snapshot()}
    assert states["huge.example"].crawl_delay_s == 30.0


def test_concurrency_slots_per_host() -> None:
    limiter, _ = make(FetchPolicy(per_host_concurrency=2, per_host_rate=None))
    inside = {"now": 0, "max": 0}

    async def one() -> None:
        async with limiter.slot("a.example"):
            inside["now"] += 1
            inside["max"] = max(inside["max"], inside["now"])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside["now"] -= 1

    async def scenario() -> None:
        await asyncio.gather(*(one() for _ in range(8)))

    run(scenario())
    assert inside["max"] == 2


def test_throttling_pauses_for_retry_after_or_exponentially() -> None:
    limiter, t = make(FetchPolicy(backoff_base_s=2.0, backoff_max_s=60.0, max_retry_after_s=600.0))
    assert limiter.record_failure("a.example", throttled=True, retry_after_s=30.0) == 30.0
    assert limiter.paused_for("a.example") == pytest.approx(30.0)
    assert limiter.record_failure("a.example", throttled=True, retry_after_s=10_000.0) == 600.0  # clipped
    # without Retry-After: 2, 4, 8, ... capped at backoff_max_s
    pauses = [limiter.record_failure("b.example", throttled=True) for _ in range(7)]
    assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    t.now += 61
    assert limiter.paused_for("b.example") == 0.0


def test_plain_failures_pause_only_from_the_threshold_and_success_resets() -> None:
    limiter, _ = make(FetchPolicy(host_failure_threshold=3, backoff_base_s=1.0))
    assert [limiter.record_failure("a.example", throttled=False) for _ in range(4)] == [0.0, 0.0, 1.0, 2.0]
    limiter.record_success("a.example")
    assert limiter.record_failure("a.example", throttled=False) == 0.0


def test_snapshot_and_restore_round_trip_in_wall_clock_time() -> None:
    limiter, t = make(FetchPolicy())
    limiter.record_failure("a.example", throttled=True, retry_after_s=120.0)
    limiter.record_failure("b.example", throttled=False)
    snap = {s.host: s for s in limiter.snapshot()}
    assert snap["a.example"].backoff_until == pytest.approx(t.wall() + 120.0)
    assert snap["b.example"] == HostState("b.example", None, 1)

    again, t2 = make(FetchPolicy())
    t2.now += 20  # the next attempt starts 20 s later
    again.restore(snap.values())
    assert again.paused_for("a.example") == pytest.approx(100.0)
    assert again.paused_for("b.example") == 0.0
    again.restore([HostState("c.example", backoff_until=t2.wall() - 5, failures=0)])  # expired
    assert again.paused_for("c.example") == 0.0
