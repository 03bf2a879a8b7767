"""Several processes drain the same shard at once: every sample is processed exactly once."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State

WORKERS = 4
SAMPLES = 600


def _worker(url: str, name: str, shard: int, start: mp.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    ledger = Ledger.open(url, shards=1)
    start.wait(timeout=120)  # every worker has its imports and connection before any claims
    while batch := ledger.claim(state=State.INGESTED, owner=name, shard=shard, limit=25, lease_seconds=300):
        ids = [r["id"] for r in batch]
        ledger.move(ids, from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok",
                    details={"worker": name}, owner=name)
        time.sleep(0.005)  # stands in for the stage's work; SQLite's lock is not fair to waiters without it
    ledger.dispose()


def test_concurrent_claims_process_every_sample_exactly_once(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, shards=1)
    ledger.add_samples(
        NewSample(caption=f"雪山脚下的湖泊 第{i}张", source="s.csv", url=normalise_url(f"http://a.example.com/{i}.jpg")) for i in range(SAMPLES)
    )
    ctx = mp.get_context("spawn")
    # A barrier, not an event: under load a spawned worker can take longer to import than another
    # takes to drain the shard, and then the test would not exercise contention at all.
    start = ctx.Barrier(WORKERS + 1)
    procs = [ctx.Process(target=_worker, args=(ledger_url, f"w{k}", 0, start)) for k in range(WORKERS)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with ledger.engine.connect() as conn:
        per_sample = conn.execute(
            sa.text("SELECT sample_id, COUNT(*) FROM sample_event WHERE stage = 'text' GROUP BY sample_id")
        ).all()
        workers = conn.execute(sa.text("SELECT details FROM sample_event WHERE stage = 'text'")).scalars().all()
    assert len(per_sample) == SAMPLES
    assert all(n == 1 for _, n in per_sample)
    assert ledger.funnel() == {"text_ok": SAMPLES}
    # The work really was shared, so the test exercised contention and not one lucky worker.
    names = {(w if isinstance(w, dict) else json.loads(w))["worker"] for w in workers}
    assert len(names) >= 2
    ledger.dispose()
