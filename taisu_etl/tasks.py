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
    from taisu_etl.images._launch import start_fork_server

    start_fork_server()  # the decode workers' imports overlap with opening the ledger
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


def score(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.score import score_shard

    with _opened(recipe) as (settings, ledger):
        return _finish(score_shard(ledger, open_store(settings), settings.score, shard=shard,
                                   ctx=_ctx(context, settings.recipe_version), lease_seconds=settings.pipeline.lease_seconds))


def caption(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.caption import caption_shard
    from taisu_etl.text import TextFilter

    with _opened(recipe) as (settings, ledger):
        return _finish(caption_shard(ledger, open_store(settings), settings.caption, settings.score, TextFilter(settings.text),
                                     shard=shard, ctx=_ctx(context, settings.recipe_version),
                                     lease_seconds=settings.pipeline.lease_seconds))


def release_create(name: str, options: Mapping[str, Any], recipe: str | None = None,
                   context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build and publish a release from the release DAG's form (empty fields take the defaults)."""
    from taisu_etl.release import LATEST, ReleaseOptions, create_release
    from taisu_etl.services import open_store

    opts = {k: v for k, v in options.items() if v not in (None, "", "None")}
    release_options = ReleaseOptions(
        min_score=float(opts["min_score"]) if "min_score" in opts else None,
        generated_captions=bool(opts.get("with_generated_captions", True)),
        sources=tuple(opts.get("sources") or ()),
        formats=tuple(opts.get("formats") or ("taisu", "webdataset", "parquet")),
        tgz=bool(opts.get("tgz", False)),
        shard_size=int(opts.get("shard_size", 10_000)),
        parent=opts.get("parent") or LATEST,
    )
    with _opened(recipe) as (settings, ledger):
        report = create_release(ledger, open_store(settings), name, release_options,
                                ctx=_ctx(context, settings.recipe_version), progress=log.info)
        return _finish(report)


def release_verify(name: str, recipe: str | None = None) -> dict[str, Any]:
    """Re-check a published release; fails the task when anything does not match its manifest."""
    from taisu_etl.release import ReleaseError, verify_release
    from taisu_etl.services import open_store

    with _opened(recipe) as (settings, ledger):
        report = verify_release(open_store(settings), name, ledger=ledger)
    log.info("%s", report.summary())
    if not report.ok:
        raise ReleaseError(report.summary())
    return report.as_dict()


def queue_of(stage: str) -> str:
    """The Airflow queue a model stage runs on (`[score] queue` / `[caption] queue`), read when the DAG is parsed."""
    settings = load_settings(None)
    return getattr(settings, stage).queue


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
