"""What each Airflow task does, as plain functions: the DAG files call these and nothing else.

No Airflow import here: the same functions run under `dag.test()`, a Celery worker, or a test.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from taisu_etl.config import Settings, load_settings
from taisu_etl.db.context import RunContext
from taisu_etl.errors import InputError
from taisu_etl.vocab import State

if TYPE_CHECKING:
    from taisu_etl.db.ledger import Ledger

log = logging.getLogger(__name__)


@contextmanager
def _opened(recipe: str | None) -> Iterator[tuple[Settings, Ledger]]:
    """The settings and an open ledger for one task; the ledger's connections close afterwards."""
    from taisu_etl.services import open_ledger

    settings = load_settings(recipe or None)
    ledger = open_ledger(settings)
    try:
        yield settings, ledger
    finally:
        ledger.dispose()


def _finish(report: Any) -> dict[str, Any]:
    log.info("%s", report.summary())
    return report.as_dict()


def prepare(sources: list[str], recipe: str | None = None) -> list[str]:
    """Migrate the ledger and expand the source globs; fails before any work if one matches nothing."""
    from taisu_etl.db.engine import check_connection, make_engine
    from taisu_etl.db.migrate import upgrade

    settings = load_settings(recipe or None)
    engine = make_engine(settings.ledger_url)
    check_connection(engine)
    upgrade(engine)
    engine.dispose()
    files: list[str] = []
    for pattern in sources:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else ([pattern] if Path(pattern).exists() else [])
        if not matched:
            raise InputError(pattern, "no such source file: fix the `sources` parameter")
        files.extend(str(Path(m).resolve()) for m in matched)
    return files


def ingest(path: str, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.stages.ingest import ingest_file

    with _opened(recipe) as (settings, ledger):
        return _finish(ingest_file(ledger, path, ctx=_ctx(context, settings.recipe_version), batch_size=settings.pipeline.batch_size))


def ingest_taisu(archives: list[str], captions: list[str], recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ingest TaiSu's released archives (images to the object store); a no-op without archives."""
    if not archives:
        return {"skipped": "no TaiSu archives given"}
    from taisu_etl.services import open_store
    from taisu_etl.stages.ingest import ingest_taisu as run

    with _opened(recipe) as (settings, ledger):
        return _finish(run(ledger, open_store(settings), archives, captions, ctx=_ctx(context, settings.recipe_version)))


def text_filter(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.stages.text_filter import filter_shard
    from taisu_etl.text import TextFilter

    with _opened(recipe) as (settings, ledger):
        return _finish(filter_shard(ledger, TextFilter(settings.text), shard=shard, ctx=_ctx(context, settings.recipe_version),
                                    batch_size=settings.pipeline.batch_size))


def fetch(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.fetch import fetch_shard

    with _opened(recipe) as (settings, ledger):
        return _finish(fetch_shard(ledger, open_store(settings), settings.fetch, settings.image, shard=shard,
                                   ctx=_ctx(context, settings.recipe_version), lease_seconds=settings.pipeline.lease_seconds))


def dedup(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.dedup import dedup_shard

    with _opened(recipe) as (settings, ledger):
        return _finish(dedup_shard(ledger, open_store(settings), settings.image, shard=shard, ctx=_ctx(context, settings.recipe_version)))


def recheck(limit: int, rate: float, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.stages.recheck import recheck as run

    with _opened(recipe) as (settings, ledger):
        return _finish(run(ledger, settings.fetch, settings.image, limit=limit, rate=rate, ctx=_ctx(context, settings.recipe_version)))


def shards_in(states: str | list[str], recipe: str | None = None) -> list[int]:
    """The shards a mapped stage task must cover: those with samples waiting in any of `states`."""
    wanted = [states] if isinstance(states, str) else states
    with _opened(recipe) as (_, ledger):
        return sorted({shard for s in wanted for shard in ledger.shards_with(State(s))})


def funnel(recipe: str | None = None) -> str:
    from taisu_etl.reports import format_funnel

    with _opened(recipe) as (_, ledger):
        text = format_funnel(ledger.funnel(), ledger.reason_counts())
    log.info("funnel:\n%s", text)
    return text


def _ctx(context: Mapping[str, Any] | None, recipe_version: str) -> RunContext:
    if context is None:
        return RunContext.from_airflow_env(recipe_version=recipe_version)
    return RunContext.from_airflow_context(context, recipe_version=recipe_version)
