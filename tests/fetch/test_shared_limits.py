"""Per-host limits hold across fetch processes: the shared budget in the ledger.

The store's SQL on SQLite and Postgres (slot blocks never overlap, grants stay within the limit,
crashed owners' grants expire), then the real thing: three fetch-stage processes on their own
shards against one loopback host that times every request and counts its open connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from taisu_etl.db.engine import make_engine
from taisu_etl.db.host_budget import LedgerHostBudget
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.db.migrate import upgrade
from taisu_etl.db.schema import host_grant
from taisu_etl.fetch import FetchPolicy, Fetcher
from taisu_etl.fetch.host_budget import BudgetAnswer, BudgetAsk, BudgetStore
from taisu_etl.vocab import State
from tests.fetch.support import NetSpy, fake_getaddrinfo, image, run, serve

ROOT = Path(__file__).resolve().parents[2]


def ask(host: str, *, want: int = 0, floor: int = 0, limit: int = 4, slots: int = 0, interval: float = 0.1) -> BudgetAsk:
    return BudgetAsk(host=host, want=want, floor=floor, limit=limit, slots=slots, interval=interval)


# --- the store's SQL ---------------------------------------------------------------------------


def test_slot_blocks_follow_each_other_on_the_database_clock(ledger: Ledger) -> None:
    store = LedgerHostBudget(ledger)
    a = store.exchange("a", [ask("h.example", want=1, slots=5, interval=0.1)], ttl_s=60).grants[0]
    b = store.exchange("b", [ask("h.example", want=1, slots=3, interval=0.1)], ttl_s=60).grants[0]
    later = store.exchange("a", [ask("h.example", want=1, slots=2, interval=0.1)], ttl_s=60)
    assert (a.slots, b.slots) == (5, 3)
    assert a.slot_start is not None and b.slot_start is not None
    # b's block starts where a's ends: one paced stream whoever asks
    assert b.slot_start == pytest.approx(a.slot_start + 0.5)
    assert later.grants[0].slot_start == pytest.approx(b.slot_start + 0.3)
    # a quiet host's block starts now, not in the past
    other = store.exchange("a", [ask("quiet.example", want=1, slots=1)], ttl_s=60)
    assert other.grants[0].slot_start == pytest.approx(other.now)


def test_concurrent_reservations_never_overlap(ledger: Ledger) -> None:
    """16 threads x 10 exchanges on one host and a few others: every block is disjoint from the rest."""
    store = LedgerHostBudget(ledger)

    def reserve(i: int) -> list[tuple[float, float]]:
        got = []
        for j in range(10):
            hosts = ["h.example", f"x{(i + j) % 3}.example"]
            answer = store.exchange(f"w{i}", [ask(h, want=1, limit=64, slots=1 + (i + j) % 4, interval=0.01) for h in hosts], ttl_s=60)
            g = answer.grants[0]
            assert g.host == "h.example" and g.slot_start is not None
            got.append((g.slot_start, g.slot_start + g.slots * 0.01))
        return got

    with ThreadPoolExecutor(16) as pool:
        blocks = sorted(b for part in pool.map(reserve, range(16)) for b in part)
    assert len(blocks) == 160
    for (_, end), (start, _) in zip(blocks, blocks[1:]):
        assert start >= end - 1e-9


def test_grants_stay_within_the_limit_and_share_it(ledger: Ledger) -> None:
    store = LedgerHostBudget(ledger)

    def allowed(owner: str, want: int, floor: int = 0) -> int:
        return store.exchange(owner, [ask("h.example", want=want, floor=floor, limit=4)], ttl_s=60).grants[0].allowed

    assert allowed("a", 4) == 4  # alone: everything it wants
    assert allowed("b", 4) == 0  # nothing free; b is recorded as wanting
    assert allowed("a", 4, floor=4) == 2  # a's fair share is now half; its 4 in flight stay recorded
    assert allowed("b", 4) == 0  # ... until a's requests end
    assert allowed("a", 4, floor=2) == 2
    assert allowed("b", 4) == 2
    assert allowed("a", 0) == 0  # a's queue is empty: it gives its units back
    assert allowed("b", 4) == 4
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(host_grant.c.owner, host_grant.c.units)).all() == [("b", 4)]


def test_expired_grants_of_a_crashed_owner_do_not_count(ledger: Ledger) -> None:
    store = LedgerHostBudget(ledger)
    assert store.exchange("crashed", [ask("h.example", want=4)], ttl_s=60).grants[0].allowed == 4
    assert store.exchange("b", [ask("h.example", want=4)], ttl_s=60).grants[0].allowed == 0
    with ledger.engine.begin() as conn:  # "crashed" stops renewing: a minute later its grant has lapsed
        conn.execute(sa.update(host_grant).where(host_grant.c.owner == "crashed").values(expires_at=host_grant.c.expires_at - 61))
    assert store.exchange("b", [ask("h.example", want=4)], ttl_s=60).grants[0].allowed == 4
    store.release_all("b")
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(host_grant)).scalar_one() == 0


def test_a_killed_owner_on_this_machine_frees_its_units_at_once(ledger: Ledger) -> None:
    """A fetch process that was SIGKILLed here is provably gone (pid and start time): the next
    exchange frees its units without waiting for the grant to expire (a retried task would wait)."""
    from taisu_etl.db.leases import LeaseOwner

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = LeaseOwner.current("fetch-budget.killed", pid=victim.pid).token
        store = LedgerHostBudget(ledger)
        assert store.exchange(killed, [ask("h.example", want=4)], ttl_s=600).grants[0].allowed == 4
        assert store.exchange("b", [ask("h.example", want=4)], ttl_s=600).grants[0].allowed == 0  # alive: it holds them
    finally:
        victim.kill()
        victim.wait()
    assert store.exchange("b", [ask("h.example", want=4)], ttl_s=600).grants[0].allowed == 4
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(host_grant.c.owner)).scalars().all() == ["b"]


def test_every_exchange_renews_the_owner_grants(ledger: Ledger) -> None:
    store = LedgerHostBudget(ledger)
    first = store.exchange("a", [ask("h.example", want=2), ask("g.example", want=1)], ttl_s=30)

    def expiries() -> set[float]:
        with ledger.engine.connect() as conn:
            return set(conn.execute(sa.select(host_grant.c.expires_at).where(host_grant.c.owner == "a")).scalars())

    assert expiries() == {first.now + 30}
    renewal = store.exchange("a", [], ttl_s=300)  # no asks: every grant of "a" is renewed
    assert renewal.now >= first.now
    assert expiries() == {renewal.now + 300}


# --- one process, many hosts: batching ----------------------------------------------------------


class CountingStore:
    def __init__(self, inner: BudgetStore) -> None:
        self.inner = inner
        self.asks: list[int] = []

    def exchange(self, owner: str, asks: list[BudgetAsk], ttl_s: float) -> BudgetAnswer:
        self.asks.append(len(asks))
        return self.inner.exchange(owner, asks, ttl_s)

    def release_all(self, owner: str) -> None:
        self.inner.release_all(owner)


def test_one_process_on_many_hosts_batches_its_exchanges(net: NetSpy, tmp_path: Path) -> None:
    """120 hosts, two URLs each: the budget is asked for in a handful of exchanges, not one per host or request."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(make_engine(url))
    ledger = Ledger.open(url)
    counting = CountingStore(LedgerHostBudget(ledger))

    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            names = [f"h{i}.synth.test" for i in range(120)]
            pol = FetchPolicy(allow_loopback=frozenset(f"{n}:{srv.port}" for n in names), per_host_rate=5.0, concurrency=64)
            async with Fetcher(pol, getaddrinfo=fake_getaddrinfo({n: ["127.0.0.1"] for n in names}), budget=counting) as f:
                results = [r async for r in f.fetch_many([srv.url(f"/img.png?{k}", host=n) for n in names for k in range(2)])]
            assert all(r.ok for r in results), {r.reason for r in results}
            assert len(srv.hits) == 120 * 3  # robots.txt and two images per host

    run(scenario())
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(host_grant)).scalar_one() == 0  # all given back
    ledger.dispose()
    # 360 requests on 120 hosts; each exchange answers many hosts at once
    assert sum(counting.asks) >= 120
    assert len(counting.asks) <= 60, counting.asks


def test_a_request_without_budget_waits_a_bounded_time_then_backs_off(net: NetSpy, tmp_path: Path) -> None:
    """Another worker holds all of the host's units: nothing is sent, the URL is host_backoff (not an
    attempt) after shared_wait_s; once the units are given back, a new fetcher gets through."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(make_engine(url))
    ledger = Ledger.open(url)
    store = LedgerHostBudget(ledger)
    assert store.exchange("other-worker", [ask("127.0.0.1", want=2, limit=2)], ttl_s=60).grants[0].allowed == 2

    async def scenario() -> None:
        async with serve(net, {"/img.png": image}) as srv:
            pol = FetchPolicy(allow_loopback=frozenset({srv.allow}), per_host_concurrency=2, shared_wait_s=0.5)
            async with Fetcher(pol, budget=store) as f:
                started = time.monotonic()
                res = await f.fetch(srv.url("/img.png"))
                assert res.reason == "host_backoff" and not res.permanent, res
                assert time.monotonic() - started >= 0.5
            assert srv.hits == []
            store.release_all("other-worker")
            async with Fetcher(pol, budget=store) as f:
                assert (await f.fetch(srv.url("/img.png"))).ok
            assert srv.paths() == ["/robots.txt", "/img.png"]

    run(scenario())
    ledger.dispose()


# --- several processes against one host ---------------------------------------------------------


@dataclass
class Arrivals:
    """A loopback HTTP server that answers every request with a 404 after `hold_s` and closes the
    connection, recording when each request arrived and how many connections were open at once."""

    hold_s: float
    times: list[float] = field(default_factory=list)
    open_now: int = 0
    open_max: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.times.append(time.monotonic())
            await asyncio.sleep(self.hold_s)
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.open_now -= 1

    def rate(self) -> float:
        t = sorted(self.times)
        return (len(t) - 1) / (t[-1] - t[0])

    def busiest_second(self) -> int:
        t = sorted(self.times)
        return max(sum(1 for u in t[i:] if u < s + 1.0) for i, s in enumerate(t))


@pytest.fixture
def arrivals() -> Iterator[Arrivals]:
    server = Arrivals(hold_s=0.08)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = loop.create_future()

    async def main() -> None:
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = srv.sockets[0].getsockname()[1]
        started.set()
        async with srv:
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(5)
    yield server
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(5)
    loop.close()


RATE, CONCURRENCY, URLS = 20.0, 2, 90


def _fetch_processes(ledger_url: str, tmp_path: Path, server: Arrivals, shards: int, shared: bool) -> list[dict[str, object]]:
    """Ingest URLS URLs of the one host into `shards` shards and run one fetch-stage process per shard, all at once."""
    ledger = Ledger.open(ledger_url, shards=shards)
    host = f"127.0.0.1:{server.port}"
    ledger.add_samples((NewSample(caption=f"湖边的一棵老树 第{i}张", source="s.csv", url=f"http://{host}/{i}.jpg") for i in range(URLS)),
                       state=State.TEXT_OK, reason="ok")
    ledger.dispose()
    settings = {"allow_loopback": [host], "per_host_rate": RATE, "per_host_concurrency": CONCURRENCY, "concurrency": 16,
                "deadline_s": 5.0, "retry_base_s": 0.0, "shared_host_limits": shared}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fetch.fetch_worker", ledger_url, str(shards), str(shard),
                               str(tmp_path / "objects"), json.dumps(settings)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for shard in range(shards)]
    try:
        for p in procs:  # every worker imported and connected: start them together
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_fetch_processes_share_the_host_limits(arrivals: Arrivals, ledger_url: str, tmp_path: Path) -> None:
    """Three fetch-stage processes, one shard each, all URLs on one host."""
    shards = 3
    # shared=False (each process on its own) measured 52 requests/s, 69 in the busiest second and
    # 6 connections at once for 3 processes: the limits below fail without the shared budget.
    reports = _fetch_processes(ledger_url, tmp_path, arrivals, shards, shared=True)
    assert sum(r["claimed"] for r in reports) == URLS  # type: ignore[misc]
    assert all(r["reasons"] == {"http_404": r["claimed"]} for r in reports), reports
    assert len(arrivals.times) == URLS + shards  # the images and one robots.txt per process
    print(f"\n{shards} processes: {arrivals.rate():.1f} requests/s overall, busiest second {arrivals.busiest_second()}, "
          f"at most {arrivals.open_max} connections open")
    # Each process alone would keep to the limits; together they must too. Tolerance: the first
    # burst (per_host_burst = 4) and a slot's grace.
    assert arrivals.open_max <= CONCURRENCY
    assert arrivals.busiest_second() <= RATE + 4 + 2
    assert arrivals.rate() <= RATE * 1.1
