"""Ledger operations on SQLite and Postgres: the same behaviour on both."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger, NewSample, Outcome, shard_of
from taisu_etl.db.schema import sample, sample_event, sample_state
from taisu_etl.urls import normalise_url, url_id
from taisu_etl.vocab import Stage, State


def _rows(n: int, source: str = "wukong_100m_0.csv") -> list[NewSample]:
    return [
        NewSample(caption=f"夕阳下的海边小镇 {i}", source=source, url=normalise_url(f"http://img.example.com/{i}.jpg"), source_pos=f"line {i + 2}")
        for i in range(n)
    ]


def _count(ledger: Ledger, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


def test_add_samples_collapses_duplicates_by_normalised_url_and_caption(ledger: Ledger) -> None:
    rows = [
        NewSample(caption="一只橘猫 趴在窗台上", source="a.csv", url=normalise_url("HTTP://Img.Example.com:80/cat.jpg#top")),
        NewSample(caption="一只橘猫  趴在窗台上 ", source="a.csv", url=normalise_url("http://img.example.com/cat.jpg")),
        NewSample(caption="另一种说法：窗台上的猫", source="a.csv", url=normalise_url("http://img.example.com/cat.jpg")),
    ]
    first = ledger.add_samples(rows)
    assert (first.inserted, first.duplicates) == (2, 1)
    again = ledger.add_samples(rows)
    assert (again.inserted, again.duplicates) == (0, 3)
    assert _count(ledger, sample) == 2
    assert _count(ledger, sample_event, sample_event.c.reason == "ingested") == 2
    assert ledger.funnel() == {"ingested": 2}
    with ledger.engine.connect() as conn:
        ids = {r.url_id for r in conn.execute(sa.select(sample.c.url_id))}
    assert ids == {url_id("http://img.example.com/cat.jpg")}  # both captions share the URL's id


def test_shards_are_stable_and_in_range(ledger: Ledger) -> None:
    ledger.add_samples(_rows(200))
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(sample.c.url_id, sample_state.c.shard).join(sample_state, sample_state.c.sample_id == sample.c.id)).all()
    assert {shard for _, shard in rows} == set(range(4))
    assert all(shard == shard_of(uid, 4) for uid, shard in rows)


def test_ingest_event_records_source_position_and_airflow_context(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "taisu_pipeline")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-11-24")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "ingest")
    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", "2")
    ledger.add_samples(_rows(1))
    (event,) = ledger.events(1)
    assert event["details"] is None  # the source file and position live on the sample row
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sample.c.source, sample.c.source_pos)).one() == ("wukong_100m_0.csv", "line 2")
    assert (event["dag_id"], event["run_id"], event["task_id"], event["try_number"]) == ("taisu_pipeline", "manual__2026-11-24", "ingest", 2)
    assert event["recipe_version"] == "test" and event["stage"] == "ingest" and event["from_state"] is None


def test_move_writes_one_event_per_sample_and_guards_the_source_state(ledger: Ledger) -> None:
    ledger.add_samples(_rows(10))
    ids = list(range(1, 11))
    ctx = RunContext(dag_id="d", run_id="r", task_id="text_filter", map_index=3, try_number=1)
    moved = ledger.move(
        ids[:6], from_state=State.INGESTED, to_state=State.TEXT_REJECTED, stage=Stage.TEXT, reason="text_too_short",
        details=[{"chars": i, "min_chars": 5} for i in range(6)], updates={"caption_clean": [f"c{i}" for i in range(6)]}, ctx=ctx,
    )
    assert moved == 6
    # Samples no longer in the source state are skipped and get no second event.
    assert ledger.move(ids, from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok") == 4
    assert ledger.funnel() == {"text_rejected": 6, "text_ok": 4}
    assert ledger.reason_counts()[0] == ("text_rejected", "text_too_short", 6)
    lineage = ledger.events(3)
    assert [e["to_state"] for e in lineage] == ["ingested", "text_rejected"]
    assert lineage[-1]["details"] == {"chars": 2, "min_chars": 5}
    assert (lineage[-1]["task_id"], lineage[-1]["map_index"]) == ("text_filter", 3)
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sample.c.caption_clean).where(sample.c.id == 3)).scalar_one() == "c2"


def test_move_refuses_unknown_reason_codes_and_ledger_owned_columns(ledger: Ledger) -> None:
    ledger.add_samples(_rows(1))
    with pytest.raises(ValueError, match="unknown reason code"):
        ledger.move([1], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="because")
    with pytest.raises(ValueError, match="ledger-owned"):
        ledger.move([1], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok", updates={"pair_hash": ["x"]})
    assert ledger.funnel() == {"ingested": 1}


def test_apply_groups_mixed_outcomes(ledger: Ledger) -> None:
    ledger.add_samples(_rows(5))
    outcomes = [
        Outcome(1, State.TEXT_OK, "ok", updates={"caption_clean": "a"}),
        Outcome(2, State.TEXT_REJECTED, "pii", details={"kind": "mobile"}),
        Outcome(3, State.TEXT_OK, "ok", updates={"caption_clean": "c"}),
        Outcome(4, State.TEXT_REJECTED, "boilerplate"),
        Outcome(5, State.TEXT_REJECTED, "pii", details={"kind": "email"}),
    ]
    counts = ledger.apply(outcomes, from_state=State.INGESTED, stage=Stage.TEXT)
    assert counts == {"ok": 2, "pii": 2, "boilerplate": 1}
    assert ledger.funnel() == {"text_ok": 2, "text_rejected": 3}
    assert ledger.events(5)[-1]["details"] == {"kind": "email"}


def test_claims_are_exclusive_until_the_lease_ends(ledger: Ledger) -> None:
    ledger.add_samples(_rows(40))
    shard = 0
    in_shard = ledger.claim(state=State.INGESTED, owner="probe", shard=shard, limit=1000)
    assert in_shard and all(set(r) == {"id", "url", "caption"} for r in in_shard)
    ledger.release_claims("probe")
    a = ledger.claim(state=State.INGESTED, owner="a", shard=shard, limit=3)
    b = ledger.claim(state=State.INGESTED, owner="b", shard=shard, limit=1000)
    assert len(a) == 3 and len(a) + len(b) == len(in_shard)
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    assert ledger.claim(state=State.INGESTED, owner="c", shard=shard, limit=1000) == []
    # b's decision is refused for samples it does not hold.
    assert ledger.move([r["id"] for r in a], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok", owner="b") == 0
    # An expired lease can be taken over; the old owner can no longer decide.
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(sample_state).where(sample_state.c.lease_owner == "a").values(lease_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    c = ledger.claim(state=State.INGESTED, owner="c", shard=shard, limit=1000)
    assert sorted(r["id"] for r in c) == sorted(r["id"] for r in a)
    assert ledger.move([r["id"] for r in a], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok", owner="a") == 0
    assert ledger.move([r["id"] for r in c], from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok", owner="c") == 3


def test_claim_skips_samples_not_yet_due_for_retry(ledger: Ledger) -> None:
    ledger.add_samples(_rows(4))
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    ledger.move([1, 2, 3, 4], from_state=State.INGESTED, to_state=State.FETCH_RETRY, stage=Stage.FETCH, reason="http_5xx",
                updates={"attempts": [1] * 4, "next_attempt_at": [later, later, None, None]})
    got = ledger.claim(state=State.FETCH_RETRY, owner="w", limit=10)
    assert sorted(r["id"] for r in got) == [3, 4]
    assert ledger.shards_with(State.FETCH_RETRY) == sorted({r for r in ledger.shards_with(State.FETCH_RETRY)})


def test_views_answer_provenance_questions(ledger: Ledger) -> None:
    ledger.add_samples(_rows(3))
    ledger.move([1], from_state=State.INGESTED, to_state=State.TEXT_REJECTED, stage=Stage.TEXT, reason="boilerplate")
    with ledger.engine.connect() as conn:
        funnel = dict(conn.execute(sa.text("SELECT state, samples FROM v_funnel")).all())
        rejections = conn.execute(sa.text("SELECT state, reason, samples FROM v_rejections")).all()
        lineage = conn.execute(sa.text("SELECT stage, reason FROM v_sample_lineage WHERE sample_id = 1 ORDER BY created_at, stage")).all()
    assert funnel == {"ingested": 2, "text_rejected": 1}
    assert [tuple(r) for r in rejections] == [("text_rejected", "boilerplate", 1)]
    assert sorted(tuple(r) for r in lineage) == [("ingest", "ingested"), ("text", "boilerplate")]
