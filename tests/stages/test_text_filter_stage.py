"""The text filter stage on the ledger: one reason-coded event per caption, on both databases."""

from __future__ import annotations

import sqlalchemy as sa

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.stages.text_filter import filter_shard
from taisu_etl.text import TextFilter, TextFilterConfig
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import State

CAPTIONS = {
    "夕阳下的海边小镇，渔船归港": ("text_ok", "ok"),
    "查看源网页": ("text_rejected", "boilerplate"),
    "IMG_20190312_154233.jpg": ("text_rejected", "filename_or_url"),
    "好": ("text_rejected", "text_too_short"),
    "联系电话13812345678 欢迎来电咨询": ("text_rejected", None),  # rejected one way or another
    "<b>故宫的雪景</b>&nbsp;美不胜收": ("text_ok", "ok"),
}


def _add(ledger: Ledger, captions: list[str]) -> None:
    ledger.add_samples(NewSample(caption=c, source="t.csv", url=normalise_url(f"http://i.example.com/{i}.jpg")) for i, c in enumerate(captions))


def _by_caption(ledger: Ledger) -> dict[str, tuple[str, str, str | None]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT s.id, s.caption, s.caption_clean, st.state, st.last_reason FROM sample s JOIN sample_state st ON st.sample_id = s.id"
        )).all()
    return {r.id: (r.caption, r.state, r.last_reason, r.caption_clean) for r in rows}  # type: ignore[return-value]


def test_each_caption_gets_its_decision_and_one_event(ledger: Ledger) -> None:
    _add(ledger, list(CAPTIONS))
    ctx = RunContext(dag_id="taisu_pipeline", run_id="r1", task_id="text_filter", map_index=0, try_number=1)
    report = filter_shard(ledger, TextFilter(), ctx=ctx)
    assert report.seen == len(CAPTIONS) and report.kept == 2
    rows = _by_caption(ledger)
    for i, (caption, (state, reason)) in enumerate(CAPTIONS.items(), start=1):
        stored, got_state, got_reason, clean = rows[i]
        assert got_state == state, caption
        if reason:
            assert got_reason == reason, caption
    # The HTML caption is kept with its cleaned text; the plain one needs no rewrite.
    assert rows[6][3] == "故宫的雪景 美不胜收" and rows[1][3] is None
    # A rejected caption keeps no phone number in the ledger, whichever rule rejected it.
    assert "13812345678" not in rows[5][0]
    event = ledger.events(2)[-1]
    assert (event["stage"], event["reason"], event["task_id"], event["map_index"]) == ("text", "boilerplate", "text_filter", 0)
    assert event["details"]["rule"] == "boilerplate"
    # Re-running decides nothing twice.
    assert filter_shard(ledger, TextFilter()).seen == 0
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM sample_event WHERE stage = 'text'")).scalar_one() == len(CAPTIONS)


def test_over_frequent_captions_count_across_the_whole_ledger(ledger: Ledger) -> None:
    common = "高清壁纸 风景 自然 山水"
    _add(ledger, [common] * 4 + ["西湖边的柳树发了新芽"])
    text_filter = TextFilter(TextFilterConfig(max_caption_frequency=3))
    filter_shard(ledger, text_filter, shard=None)
    assert ledger.funnel() == {"text_rejected": 4, "text_ok": 1}
    assert ("text_rejected", "over_frequent", 4) in ledger.reason_counts()


def test_a_shard_is_filtered_alone(ledger: Ledger) -> None:
    _add(ledger, [f"第{i}张：黄山云海日出" for i in range(40)])
    shard0 = filter_shard(ledger, TextFilter(), shard=0)
    assert 0 < shard0.seen < 40
    assert ledger.funnel()["ingested"] == 40 - shard0.seen
    assert State.INGESTED.value in ledger.funnel()
