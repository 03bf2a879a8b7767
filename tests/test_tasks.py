"""The small decisions of the DAG tasks: release names, the recipe an asset-triggered run uses,
what counts as new releasable samples, and the progress lines of a stage task."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from taisu_etl import tasks
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.errors import ConfigError
from taisu_etl.vocab import State


def _run(run_after: datetime | None = None, events: list[Any] | None = None) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_after=run_after or datetime(2026, 11, 5, 3, 4, 5, tzinfo=UTC),
                                       consumed_asset_events=events or [])}


def _event(recipe: str | None, uri: str = tasks.RELEASABLE_SAMPLES_URI) -> SimpleNamespace:
    return SimpleNamespace(asset=SimpleNamespace(uri=uri), extra={"accepted": 3, "captioned": 3, "recipe": recipe})


def test_a_release_without_a_name_is_named_after_its_run_in_utc() -> None:
    assert tasks.release_name_for(_run()) == "taisu-20261105-030405"
    beijing = timezone(timedelta(hours=8))
    assert tasks.release_name_for(_run(datetime(2026, 11, 5, 11, 4, 5, tzinfo=beijing))) == "taisu-20261105-030405"
    assert tasks.release_name_for(None).startswith("taisu-")


def test_an_asset_triggered_run_uses_the_recipe_of_the_pipeline_run_that_triggered_it() -> None:
    assert tasks.recipe_of_run(None, _run(events=[_event("/etc/taisu/prod.toml")])) == "/etc/taisu/prod.toml"
    assert tasks.recipe_of_run(None, _run(events=[_event("/a.toml"), _event("/a.toml"), _event(None)])) == "/a.toml"
    assert tasks.recipe_of_run("/mine.toml", _run(events=[_event("/a.toml")])) == "/mine.toml"  # the form wins
    assert tasks.recipe_of_run(None, _run(events=[_event("/other.toml", uri="x-other://x")])) is None
    assert tasks.recipe_of_run(None, _run()) is None and tasks.recipe_of_run(None, None) is None
    with pytest.raises(ConfigError, match="different recipes"):
        tasks.recipe_of_run(None, _run(events=[_event("/a.toml"), _event("/b.toml")]))


def test_new_releasable_samples_count_accepted_and_captioned() -> None:
    scored = [{"reasons": {"ok": 4, "retrieval_miss": 2}}, {"reasons": {"retrieval_miss": 1}}]
    captioned = [{"reasons": {"ok": 3, "caption_rejected": 1}}]
    assert tasks.new_releasable_samples(scored, captioned) == {"accepted": 4, "captioned": 4}
    assert tasks.new_releasable_samples([], None) == {"accepted": 0, "captioned": 0}
    # A run whose score tasks found nothing, but whose caption tasks captioned what an earlier,
    # failed run had accepted: those samples are new to releases too.
    assert tasks.new_releasable_samples(None, captioned) == {"accepted": 0, "captioned": 4}


def test_a_stage_task_logs_what_waits_and_its_progress(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.add_samples(NewSample(caption=f"第{i}张图片的说明文字", source="t", url=f"http://example.com/{i}.jpg") for i in range(40))
    shard = max(range(4), key=lambda s: len(ledger.scan(state=State.INGESTED, shard=s, limit=100)))
    waiting = len(ledger.scan(state=State.INGESTED, shard=shard, limit=100))
    caplog.set_level(logging.INFO, logger="taisu_etl.tasks")
    with tasks._Progress(ledger, "text_filter", shard, [State.INGESTED], every=0.05) as progress:
        time.sleep(0.3)
    assert progress.waiting_at_start == waiting
    lines = [r.getMessage() for r in caplog.records]
    assert f"text_filter shard {shard}: {waiting} samples waiting in ingested" in lines
    assert any(line.startswith(f"text_filter shard {shard}: 0 of {waiting} done, {waiting} left") for line in lines)
