"""Ledger throughput on Postgres: batched state transitions per second (target: >= 50,000/s).

Each transition is a real `Ledger.move`: a guarded UPDATE of the sample's state plus one
reason-coded `sample_event` row, committed. Ingest (add_samples) and claim rates are printed too.

    python bench/ledger.py --db-url postgresql://postgres@127.0.0.1:5432/taisu_bench --samples 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import sqlalchemy as sa

from taisu_etl.db.engine import make_engine
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.db.migrate import upgrade
from taisu_etl.vocab import Stage, State


def _reset_database(url: str) -> None:
    """Recreate the benchmark's own database so every run starts from the same empty ledger."""
    target = sa.engine.make_url(url)
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    admin.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench"))
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20000)
    args = ap.parse_args()

    _reset_database(args.db_url)
    engine = make_engine(args.db_url)
    upgrade(engine)
    ledger = Ledger(engine, shards=64, recipe_version="bench")
    n = args.samples

    t0 = time.perf_counter()
    rows = (NewSample(caption=f"一只可爱的小猫在草地上玩耍 {i}", source="bench.csv", url=f"http://img{i % 97}.example.com/p/{i}.jpg", source_pos=f"line {i + 2}") for i in range(n))
    added = ledger.add_samples(rows, batch_size=args.batch)
    t_add = time.perf_counter() - t0
    assert added.inserted == n, added

    with engine.connect() as conn:
        ids = list(conn.execute(sa.text("SELECT id FROM sample ORDER BY id")).scalars())

    # Transitions: ingested -> text_ok (plain), then text_ok -> fetched with per-sample updates and details.
    t0 = time.perf_counter()
    moved = 0
    for i in range(0, n, args.batch):
        moved += ledger.move(ids[i : i + args.batch], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok")
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    moved2 = 0
    for i in range(0, n, args.batch):
        chunk = ids[i : i + args.batch]
        moved2 += ledger.move(
            chunk, from_state=State.TEXT_OK, to_state=State.FETCHED, stage=Stage.FETCH, reason="ok",
            details=[{"http": 200, "ms": 12} for _ in chunk],
            updates={"sha256": [f"{j:064x}" for j in chunk], "width": [640] * len(chunk), "height": [480] * len(chunk)},
        )
    t_rich = time.perf_counter() - t0
    assert moved == moved2 == n, (moved, moved2)

    t0 = time.perf_counter()
    claimed = 0
    for shard in range(64):
        while batch := ledger.claim(state=State.FETCHED, owner="bench", shard=shard, limit=args.batch):
            claimed += len(batch)
            ledger.move([r["id"] for r in batch], from_state=State.FETCHED, to_state=State.IMAGE_OK, stage=Stage.IMAGE, reason="ok", owner="bench")
    t_claim = time.perf_counter() - t0
    assert claimed == n

    with engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM sample_event")).scalar_one()
    assert events == 4 * n, events

    print(f"ledger benchmark on {engine.url.render_as_string(hide_password=True)} ({engine.dialect.server_version_info}), {n:,} samples, batch {args.batch}")
    print(f"  add_samples (upsert + ingest event)        {n / t_add:>10,.0f} samples/s   ({t_add:.2f} s)")
    print(f"  move, state only                            {n / t_plain:>10,.0f} transitions/s ({t_plain:.2f} s)")
    print(f"  move, per-sample details + 3 column updates {n / t_rich:>10,.0f} transitions/s ({t_rich:.2f} s)")
    print(f"  claim (SKIP LOCKED lease) + move            {n / t_claim:>10,.0f} samples/s   ({t_claim:.2f} s)")
    print(f"  events written: {events:,} (one per transition)")
    print(f"  target >= 50,000 state transitions/s: {'MET' if n / t_plain >= 50_000 else 'NOT MET'} "
          f"({n / t_plain:,.0f}/s; moves that also write image metadata run at {n / t_rich:,.0f}/s)")
    print(f"reproduce: python bench/ledger.py --db-url {engine.url.render_as_string(hide_password=True)} --samples {n} --batch {args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
