"""Clearing a task and running it again leaves the ledger as the first run left it.

The pipeline's task functions (what the DAG tasks call) run twice for every shard, the second
time as the next try of the same task instance, on SQLite and Postgres ledgers; after each pair
the ledger (every sample_state and sample row, and the decisions recorded per sample) must be
the same. The same for the release's create task.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from taisu_etl import tasks
from taisu_etl.db.engine import make_engine
from taisu_etl.db.schema import release, release_member, sample, sample_event, sample_state
from taisu_etl.demo import demo_web, write_demo_sources
from taisu_etl.release import ReleaseExistsError
from taisu_etl.storage import LocalObjectStore
from tests.sources.builders import jpeg, write_tar

SHARDS = 2
RUN_ID = "manual__2026-12-01T10:00:00+00:00"
RUN_AFTER = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


def _context(task_id: str, map_index: int, try_number: int, run_after: datetime = RUN_AFTER) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="taisu_pipeline", run_id=RUN_ID, task_id=task_id, map_index=map_index, try_number=try_number)
    return {"ti": ti, "run_id": RUN_ID, "dag_run": SimpleNamespace(run_after=run_after, consumed_asset_events=[])}


def _rows(conn: sa.Connection, table: sa.Table, key: str, skip: set[str]) -> list[tuple[Any, ...]]:
    columns = [c for c in table.c if c.name not in skip]
    return [tuple(r) for r in conn.execute(sa.select(*columns).order_by(table.c[key]))]


def ledger_state(url: str) -> dict[str, Any]:
    """Everything a stage decides, without the times at which it was written."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            events: dict[int, Counter[tuple[str, str | None, str, str]]] = {}
            for sid, stage, src, dst, reason in conn.execute(sa.select(
                sample_event.c.sample_id, sample_event.c.stage, sample_event.c.from_state, sample_event.c.to_state,
                sample_event.c.reason,
            )):
                events.setdefault(sid, Counter())[(stage, src, dst, reason)] += 1
            return {
                "sample_state": _rows(conn, sample_state, "sample_id", {"updated_at"}),
                "sample": _rows(conn, sample, "id", {"created_at", "updated_at"}),
                "events": events,
                "release": _rows(conn, release, "id", {"created_at"}),
                "release_member": sorted(tuple(r) for r in conn.execute(sa.select(release_member))),
            }
    finally:
        engine.dispose()


@pytest.fixture
def pipeline_env(ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("TAISU_DB_URL", ledger_url)
    monkeypatch.setenv("TAISU_PIPELINE__SHARDS", str(SHARDS))
    monkeypatch.setenv("TAISU_FETCH__PER_HOST_RATE", "500")
    monkeypatch.setenv("TAISU_FETCH__DEADLINE_S", "2")
    archive = write_tar(tmp_path / "baidu_image0.tgz", [("a1.jpg", jpeg(1, 256)), ("a2.jpg", jpeg(2, 256))])
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"a1": {"w": "一只白色的小猫在草地上", "g": "草地上的一只猫"},
                                    "a2": {"w": "一座红色的桥横跨在河上", "g": None}}, ensure_ascii=False))
    return {"url": ledger_url, "archive": str(archive), "captions": str(captions), "store": tmp_path / "var" / "objects"}


def _twice(url: str, run: Any, task_id: str, map_index: int) -> dict[str, Any]:
    """Run a task, then run it again as its next try; the ledger must not change the second time."""
    run(_context(task_id, map_index, 1))
    first = ledger_state(url)
    run(_context(task_id, map_index, 2))
    assert ledger_state(url) == first, f"{task_id} [{map_index}] changed the ledger when run again"
    return first


def test_every_pipeline_task_can_be_cleared_and_run_again(pipeline_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    url = pipeline_env["url"]
    with demo_web(pairs=12, seed=5) as web:
        monkeypatch.setenv("TAISU_FETCH__ALLOW_LOOPBACK", json.dumps([web.netloc]))
        files = tasks.prepare([str(p) for p in write_demo_sources(web, tmp_path / "lists", pairs=12, seed=5)])
        assert tasks.prepare([str(tmp_path / "lists" / "*.csv")]) == sorted(files)
        before = ledger_state(url)
        for i, path in enumerate(files):
            _twice(url, lambda c, p=path: tasks.ingest(p, None, c), "ingest", i)
        _twice(url, lambda c: tasks.ingest_taisu([pipeline_env["archive"]], [pipeline_env["captions"]], None, c), "ingest_taisu", -1)
        ingested = ledger_state(url)
        assert len(ingested["sample"]) > len(before["sample"])
        stages = [("text_filter", tasks.text_filter), ("fetch", tasks.fetch), ("dedup", tasks.dedup),
                  ("score", tasks.score), ("caption", tasks.caption)]
        for task_id, stage in stages:
            ahead = ledger_state(url)
            for shard in tasks.shards_in({"text_filter": "ingested", "fetch": ["text_ok", "fetch_retry"], "dedup": "fetched",
                                          "score": "image_ok", "caption": "accepted"}[task_id]):
                _twice(url, lambda c, s=shard, f=stage: f(s, None, c), task_id, shard)
            assert ledger_state(url) != ahead, f"{task_id} did nothing: the test would prove nothing"
    states = Counter(row[2] for row in ledger_state(url)["sample_state"])
    assert states["captioned"] >= 5 and states["ingested"] == states["image_ok"] == states["accepted"] == 0


def _release_create(name: str | None, try_number: int, run_after: datetime = RUN_AFTER) -> dict[str, Any]:
    options = {"min_score": None, "formats": ["taisu", "parquet"], "with_generated_captions": True, "tgz": False,
               "shard_size": 3, "sources": [], "parent": None}
    context = _context("create", -1, try_number, run_after)
    context["ti"].dag_id = "taisu_release"
    return tasks.release_create(name, options, None, context)


def _seed_accepted(url: str, store_root: Path) -> None:
    from taisu_etl.db.ledger import Ledger
    from taisu_etl.synthweb import make_pairs
    from taisu_etl.synthweb.seeding import seed_checked_pairs
    from taisu_etl.vocab import State

    ledger = Ledger.open(url, shards=SHARDS)
    try:
        seed_checked_pairs(ledger, LocalObjectStore(store_root), make_pairs(7, seed=3), state=State.ACCEPTED)
    finally:
        ledger.dispose()


def test_release_create_cleared_and_run_again_keeps_the_release(pipeline_env: dict[str, Any]) -> None:
    url = pipeline_env["url"]
    _seed_accepted(url, pipeline_env["store"])
    created = _release_create(None, 1)
    assert created["name"] == "taisu-20261201-100000" and created["samples"] == 7 and "already_published" not in created
    first = ledger_state(url)
    again = _release_create(None, 2)  # a cleared create of the same run: same name, same options
    assert again["already_published"] and again["samples"] == 7 and again["manifest_key"] == created["manifest_key"]
    assert ledger_state(url) == first
    assert tasks.release_verify(again["name"])["ok"]

    # The try died between writing the manifest and recording the release: the next try records it.
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.update(release).values(state="staging", published_at=None))
    engine.dispose()
    recovered = _release_create(None, 3)
    assert recovered["already_published"]
    at = [c for c in release.columns.keys() if c != "created_at"].index("published_at")  # ledger_state leaves created_at out
    no_time = lambda state: {**state, "release": [r[:at] + r[at + 1:] for r in state["release"]]}  # noqa: E731
    assert no_time(ledger_state(url)) == no_time(first)

    # Another run asking for that name is refused: releases are immutable.
    later = datetime.now(UTC) + timedelta(minutes=5)
    with pytest.raises(ReleaseExistsError, match="already published"):
        _release_create("taisu-20261201-100000", 1, run_after=later)
    assert no_time(ledger_state(url)) == no_time(first)
