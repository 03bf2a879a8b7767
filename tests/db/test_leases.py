"""Lease owners that can be proven dead, heartbeats, and what a stage's claim does about others' leases."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import sqlalchemy as sa

from taisu_etl.db.leases import LeaseConflict, LeaseOwner, StageLease, lease_holders, release_dead_leases
from taisu_etl.db.ledger import Ledger, NewSample, Outcome
from taisu_etl.db.schema import sample_state
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State


def _rows(n: int) -> Iterator[NewSample]:
    return (NewSample(caption=f"雪山脚下的湖泊 第{i}张", source="s.csv", url=normalise_url(f"http://a.example.com/{i}.jpg")) for i in range(n))


def dead_owner(label: str) -> LeaseOwner:
    """The owner token of a real process of this machine that has since exited."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        owner = LeaseOwner.current(label, pid=proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return owner


def _leases(ledger: Ledger) -> dict[int, tuple[str | None, datetime | None]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(sample_state.c.sample_id, sample_state.c.lease_owner, sample_state.c.lease_until)).all()
    return {i: (o, u.replace(tzinfo=timezone.utc) if u is not None and u.tzinfo is None else u) for i, o, u in rows}


# ------------------------------------------------------------------ owners
def test_owner_token_round_trips_and_names_this_process() -> None:
    me = LeaseOwner.current("score.3.abcd1234")
    assert me.pid == os.getpid() and me.host and me.start is not None
    assert len(me.token) <= 128
    assert LeaseOwner.parse(me.token) == me
    assert me.liveness() == "alive" and not me.is_dead()
    assert me.describe().startswith(f"score@{me.host}:{os.getpid()} (started ")
    started = me.started_at()
    assert started is not None and abs((datetime.now(timezone.utc) - started).total_seconds()) < 7 * 24 * 3600


def test_a_long_host_name_still_fits_the_column() -> None:
    me = LeaseOwner.current("caption.123456.abcd1234")
    long = LeaseOwner(host="h" * 300, pid=me.pid, start=me.start, label=me.label)
    assert len(long.token) == 128
    parsed = LeaseOwner.parse(long.token)
    assert parsed.pid == me.pid and parsed.start == me.start and parsed.label == me.label


def test_only_provably_dead_owners_are_dead() -> None:
    me = LeaseOwner.current("fetch.0.abcd1234")
    gone = dead_owner("fetch.0.abcd1234")
    assert gone.is_dead() and gone.liveness() == "dead"
    node, ticks = me.start.split(".")  # type: ignore[union-attr]
    # Same pid, another start time: the pid was reused by another process.
    assert LeaseOwner(host=me.host, pid=me.pid, start=f"{node}.{int(ticks) + 1}", label=me.label).is_dead()
    # Another host, another boot or pid namespace, or no start time: cannot be proven either way.
    assert LeaseOwner(host="elsewhere", pid=gone.pid, start=gone.start, label=me.label).liveness() == "unknown"
    assert LeaseOwner(host=me.host, pid=gone.pid, start=f"00000000.{ticks}", label=me.label).liveness() == "unknown"
    assert LeaseOwner(host=me.host, pid=gone.pid, start=None, label=me.label).liveness() == "unknown"
    # Owners written by older versions parse, with unknown liveness.
    for old in (f"fetch:{socket.gethostname()}:{gone.pid}:0", "score:cli:1f2e3d4c", "probe"):
        owner = LeaseOwner.parse(old)
        assert owner.token == old and owner.liveness() == "unknown" and not owner.is_dead()
        assert "older lease format" in owner.describe()


# ------------------------------------------------------------------ holders and release
def test_lease_holders_and_release_of_dead_and_expired_leases(ledger: Ledger) -> None:
    ledger.add_samples(_rows(60))
    alive = LeaseOwner.current("text.0.alive000").token
    gone = dead_owner("text.1.dead0000").token
    a = ledger.claim(state=State.INGESTED, owner=alive, limit=10, lease_seconds=600)
    d = ledger.claim(state=State.INGESTED, owner=gone, limit=15, lease_seconds=600)
    e = ledger.claim(state=State.INGESTED, owner="old-style:owner", limit=5, lease_seconds=600)
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    with ledger.engine.begin() as conn:  # the old owner's leases ran out, and two of the live owner's
        conn.execute(sa.update(sample_state).where(sample_state.c.lease_owner == "old-style:owner").values(lease_until=past))
        conn.execute(sa.update(sample_state).where(sample_state.c.sample_id.in_([a[0]["id"], a[1]["id"]])).values(lease_until=past))
    holders = lease_holders(ledger)
    by_owner: dict[str, int] = {}
    for h in holders:
        by_owner[h.owner] = by_owner.get(h.owner, 0) + h.samples
        assert h.state == "ingested"
        assert h.dead == (h.owner == gone) and h.expired == (h.owner == "old-style:owner")
    assert by_owner == {alive: len(a), gone: len(d), "old-style:owner": len(e)}
    assert {h.as_dict()["liveness"] for h in holders if h.owner == alive} == {"alive"}

    assert sum(h.expired_samples for h in holders if h.owner == alive) == 2

    def per_owner(holdings: list) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in holdings:
            out[h.owner] = out.get(h.owner, 0) + h.samples
        return out

    would = release_dead_leases(ledger, dry_run=True)
    assert per_owner(would) == {gone: 15, "old-style:owner": 5, alive: 2}
    assert sum(h.samples for h in lease_holders(ledger)) == 30  # a dry run changes nothing
    freed = release_dead_leases(ledger)
    assert per_owner(freed) == {gone: 15, "old-style:owner": 5, alive: 2}
    left = lease_holders(ledger)
    assert {h.owner for h in left} == {alive} and sum(h.samples for h in left) == 8
    assert release_dead_leases(ledger) == []


def test_renew_extends_only_the_owners_own_leases(ledger: Ledger) -> None:
    ledger.add_samples(_rows(20))
    mine = ledger.claim(state=State.INGESTED, owner="me", limit=5, lease_seconds=30)
    theirs = ledger.claim(state=State.INGESTED, owner="them", limit=5, lease_seconds=30)
    before = _leases(ledger)
    ids = [r["id"] for r in mine] + [r["id"] for r in theirs]
    assert ledger.renew_leases("me", ids, 3600) == 5
    after = _leases(ledger)
    for r in mine:
        assert after[r["id"]][1] - before[r["id"]][1] > timedelta(seconds=3000)  # type: ignore[operator]
    for r in theirs:
        assert after[r["id"]] == before[r["id"]]
    assert ledger.release_claims("me", [r["id"] for r in mine] + [r["id"] for r in theirs]) == 5
    assert all(_leases(ledger)[r["id"]] == (None, None) for r in mine)


# ------------------------------------------------------------------ a stage's claims
def _decide(lease: StageLease, rows: list[dict]) -> dict[str, int]:
    return lease.apply([Outcome(r["id"], State.TEXT_OK, "ok") for r in rows], from_state=State.INGESTED)


def test_a_live_owners_lease_fails_the_stage_after_its_wait_with_who_holds_what(ledger: Ledger) -> None:
    ledger.add_samples(_rows(40))
    shard = ledger.shards_with(State.INGESTED)[0]
    other = LeaseOwner.current(f"text.{shard}.other000")  # this very process: alive
    in_shard = len(ledger.scan(state=State.INGESTED, shard=shard, limit=1000))
    held = ledger.claim(state=State.INGESTED, owner=other.token, shard=shard, limit=3, lease_seconds=600)
    done = 0
    started = time.monotonic()
    with pytest.raises(LeaseConflict) as err:
        with StageLease(ledger, stage=Stage.TEXT, shard=shard, lease_seconds=60, claim_wait_seconds=1) as lease:
            while rows := lease.claim(State.INGESTED, limit=7, columns=("id",)):
                done += sum(_decide(lease, rows).values())
    assert 1 <= time.monotonic() - started < 10
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"text, shard {shard}: 3 samples in ingested are leased by text@{other.host}:{other.pid} (started ")
    assert " until 20" in msg and "taisu-etl leases release --dead" in msg
    # Everything else of the shard was done before the stage gave up; the live owner keeps its samples.
    assert done == in_shard - 3
    assert sorted(r["id"] for r in ledger.scan(state=State.INGESTED, shard=shard)) == sorted(r["id"] for r in held)
    assert {i for i, (o, _) in _leases(ledger).items() if o} == {r["id"] for r in held}


def test_a_stage_waits_for_a_live_owner_that_finishes(ledger: Ledger) -> None:
    ledger.add_samples(_rows(30))
    shard = ledger.shards_with(State.INGESTED)[0]
    other = LeaseOwner.current(f"text.{shard}.other000").token
    held = ledger.claim(state=State.INGESTED, owner=other, shard=shard, limit=4, lease_seconds=600)

    def finish() -> None:  # the other worker decides its samples a moment later
        time.sleep(1.0)
        ledger.move([r["id"] for r in held], from_state=State.INGESTED, to_state=State.TEXT_REJECTED, stage=Stage.TEXT,
                    reason="boilerplate", owner=other)

    worker = threading.Thread(target=finish)
    worker.start()
    with StageLease(ledger, stage=Stage.TEXT, shard=shard, lease_seconds=60, claim_wait_seconds=30) as lease:
        while rows := lease.claim(State.INGESTED, limit=100, columns=("id",)):
            _decide(lease, rows)
    worker.join()
    assert shard not in ledger.shards_with(State.INGESTED)
    for r in held:
        assert [(e["stage"], e["reason"]) for e in ledger.events(r["id"])] == [("ingest", "ingested"), ("text", "boilerplate")]


def test_a_dead_owners_lease_is_broken_and_its_samples_done_once(ledger: Ledger) -> None:
    ledger.add_samples(_rows(30))
    shard = ledger.shards_with(State.INGESTED)[0]
    gone = dead_owner(f"text.{shard}.dead0000").token
    held = ledger.claim(state=State.INGESTED, owner=gone, shard=shard, limit=5, lease_seconds=3600)
    started = time.monotonic()
    with StageLease(ledger, stage=Stage.TEXT, shard=shard, lease_seconds=60, claim_wait_seconds=300) as lease:
        decided = 0
        while rows := lease.claim(State.INGESTED, limit=100, columns=("id",)):
            decided += sum(_decide(lease, rows).values())
    assert time.monotonic() - started < 30  # broken at once, not waited out
    assert shard not in ledger.shards_with(State.INGESTED)
    for r in held:
        events = [e for e in ledger.events(r["id"]) if e["stage"] == "text"]
        assert len(events) == 1 and events[0]["reason"] == "ok"


def test_samples_not_yet_due_are_not_a_conflict(ledger: Ledger) -> None:
    ledger.add_samples(_rows(6))
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    ids = list(range(1, 7))
    ledger.move(ids, from_state=State.INGESTED, to_state=State.FETCH_RETRY, stage=Stage.FETCH, reason="http_5xx",
                updates={"attempts": [1] * 6, "next_attempt_at": [later] * 6})
    with StageLease(ledger, stage=Stage.FETCH, shard=None, lease_seconds=60, claim_wait_seconds=30) as lease:
        started = time.monotonic()
        assert lease.claim(State.FETCH_RETRY, limit=10, columns=("id",)) == []
        assert time.monotonic() - started < 5


def test_the_heartbeat_keeps_a_short_lease_alive_while_the_stage_works(ledger: Ledger) -> None:
    ledger.add_samples(_rows(10))
    with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=2, claim_wait_seconds=0) as lease:
        rows = lease.claim(State.INGESTED, limit=10, columns=("id",))
        assert len(rows) == 10 and lease.held() == 10
        time.sleep(4.5)  # more than twice the lease: only renewals keep it
        assert ledger.claim(state=State.INGESTED, owner="thief", limit=10, lease_seconds=60) == []
        assert sum(_decide(lease, rows).values()) == 10
    assert ledger.funnel() == {"text_ok": 10}


def test_undecided_samples_are_given_back_when_the_stage_stops(ledger: Ledger) -> None:
    ledger.add_samples(_rows(10))
    with pytest.raises(RuntimeError):
        with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=600) as lease:
            lease.claim(State.INGESTED, limit=10, columns=("id",))
            raise RuntimeError("the stage failed")
    assert all(owner is None for owner, _ in _leases(ledger).values())
    assert len(ledger.claim(state=State.INGESTED, owner="next", limit=100)) == 10


def test_a_claim_whose_answer_was_lost_is_recovered(ledger: Ledger) -> None:
    """A claim committed on the server whose reply never arrived leaves samples leased to this very
    run that it does not know about; the run finds them at the end instead of leaving them."""
    ledger.add_samples(_rows(12))
    with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=600, claim_wait_seconds=0) as lease:
        lost = ledger.claim(state=State.INGESTED, owner=lease.token, limit=5, lease_seconds=600)
        decided = 0
        while rows := lease.claim(State.INGESTED, limit=100, columns=("id",)):
            decided += sum(_decide(lease, rows).values())
    assert decided == 12 and ledger.funnel() == {"text_ok": 12}
    assert all(len([e for e in ledger.events(r["id"]) if e["stage"] == "text"]) == 1 for r in lost)


def test_decisions_on_samples_whose_lease_was_taken_over_are_refused(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.add_samples(_rows(6))
    with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=600) as lease:
        rows = lease.claim(State.INGESTED, limit=10, columns=("id",))
        with ledger.engine.begin() as conn:  # the lease ran out (a heartbeat that could not reach the ledger) ...
            conn.execute(sa.update(sample_state).values(lease_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
        taken = ledger.claim(state=State.INGESTED, owner="other", limit=2, lease_seconds=600)  # ... and another worker took some
        assert _decide(lease, rows) == {"ok": 4}
    assert any("2 decisions refused" in r.getMessage() for r in caplog.records)
    for r in taken:
        assert [e["stage"] for e in ledger.events(r["id"])] == ["ingest"]
