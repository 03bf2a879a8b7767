"""What each Airflow task does, as plain functions: the DAG files call these and nothing else.

No Airflow import here: the same functions run under `dag.test()`, a Celery worker, or a test.
Each stage task logs how many samples of its shard wait in its input state when it starts, a
progress line while it works, and the stage's summary (counts per outcome) when it ends.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from taisu_etl.config import Settings, load_settings
from taisu_etl.db.context import RunContext
from taisu_etl.errors import ConfigError, InputError
from taisu_etl.vocab import State

if TYPE_CHECKING:
    from taisu_etl.db.ledger import Ledger
    from taisu_etl.release import ReleaseOptions
    from taisu_etl.storage import ObjectStore

log = logging.getLogger(__name__)

# The Asset that chains `taisu_pipeline` to `taisu_release`: a pipeline run that moved samples into
# a releasable state (accepted or captioned) emits one event on it, and the release DAG is
# scheduled on it. An `x-` scheme: Airflow keeps such URIs as written (no normaliser).
RELEASABLE_SAMPLES_URI = "x-taisu://ledger/releasable-samples"
RELEASABLE_SAMPLES_NAME = "taisu_releasable_samples"

PROGRESS_EVERY_S = 30.0


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


class _Progress:
    """While a stage task works on a shard, logs every `every` seconds how many samples still wait.

    Counts come from the (shard, state) index of `sample_state`, so a line costs one index range
    scan; a failing count is logged once and never stops the stage.
    """

    def __init__(self, ledger: Ledger, task: str, shard: int, states: Sequence[State], every: float = PROGRESS_EVERY_S) -> None:
        self._ledger = ledger
        self._label = f"{task} shard {shard}"
        self._shard = shard
        self._states = [s.value for s in states]
        self._every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False
        self.waiting_at_start = 0

    def waiting(self) -> int:
        import sqlalchemy as sa

        from taisu_etl.db.schema import sample_state

        s = sample_state.c
        query = sa.select(sa.func.count()).where(s.shard == self._shard, s.state.in_(self._states))
        with self._ledger.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def __enter__(self) -> "_Progress":
        self._started = time.monotonic()
        try:
            self.waiting_at_start = self.waiting()
        except Exception as exc:  # noqa: BLE001 - the stage has its own reconnect policy: let it decide
            log.warning("%s: could not count the waiting samples (%s); the stage goes on", self._label, exc)
            self._failed = True
        else:
            log.info("%s: %s samples waiting in %s", self._label, f"{self.waiting_at_start:,}", " or ".join(self._states))
        self._thread = threading.Thread(target=self._run, name=f"progress-{self._label}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                left = self.waiting()
            except Exception as exc:  # noqa: BLE001 - a progress line must never fail the stage
                if not self._failed:
                    log.warning("%s: progress count failed (%s); the stage goes on", self._label, exc)
                    self._failed = True
                continue
            done = max(self.waiting_at_start - left, 0)
            elapsed = time.monotonic() - self._started
            log.info("%s: %s of %s done, %s left (%.0f s, %.0f samples/s)", self._label, f"{done:,}",
                     f"{self.waiting_at_start:,}", f"{left:,}", elapsed, done / elapsed if elapsed else 0.0)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _stage_done(task: str, shard: int, report: Any, progress: _Progress, handled: int) -> dict[str, Any]:
    """The stage's summary line, and a plain word when there was nothing to do."""
    result = _finish(report)
    if handled == 0:
        log.info("%s shard %s: no sample needed this stage (%s were waiting at the start: done by an earlier try "
                 "or another run, or not due yet)", task, shard, f"{progress.waiting_at_start:,}")
    return result


def prepare(sources: Sequence[str] | None, recipe: str | None = None) -> list[str]:
    """Migrate the ledger and expand the source globs; fails before any work if one matches nothing."""
    from taisu_etl.db.engine import check_connection, make_engine
    from taisu_etl.db.migrate import upgrade

    settings = load_settings(recipe or None)
    engine = make_engine(settings.ledger_url)
    check_connection(engine)
    upgrade(engine)
    engine.dispose()
    files: list[str] = []
    for pattern in sources or ():
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else ([pattern] if Path(pattern).exists() else [])
        if not matched:
            raise InputError(pattern, "no such source file: fix the `sources` parameter")
        files.extend(str(Path(m).resolve()) for m in matched)
    log.info("ledger %s is up to date; %d source files to ingest%s", settings.ledger_url_safe, len(files),
             "" if files else " (the run goes on with the samples already in the ledger)")
    return files


def ingest(path: str, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.stages.ingest import ingest_file

    with _opened(recipe) as (settings, ledger):
        return _finish(ingest_file(ledger, path, ctx=_ctx(context, settings.recipe_version), batch_size=settings.pipeline.batch_size))


def ingest_taisu(archives: Sequence[str] | None, captions: Sequence[str] | None, recipe: str | None = None,
                 context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ingest TaiSu's released archives (images to the object store); a no-op without archives."""
    if not archives:
        log.info("no TaiSu archives given: nothing to ingest from archives")
        return {"skipped": "no TaiSu archives given"}
    from taisu_etl.services import open_store
    from taisu_etl.stages.ingest import ingest_taisu as run

    with _opened(recipe) as (settings, ledger):
        return _finish(run(ledger, open_store(settings), list(archives), list(captions or ()), ctx=_ctx(context, settings.recipe_version)))


def text_filter(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.stages.text_filter import filter_shard
    from taisu_etl.text import TextFilter

    with _opened(recipe) as (settings, ledger), _Progress(ledger, "text_filter", shard, [State.INGESTED]) as progress:
        report = filter_shard(ledger, TextFilter(settings.text), shard=shard, ctx=_ctx(context, settings.recipe_version),
                              batch_size=settings.pipeline.batch_size)
        return _stage_done("text_filter", shard, report, progress, report.seen)


def fetch(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.images._launch import start_fork_server

    start_fork_server()  # the decode workers' imports overlap with opening the ledger
    from taisu_etl.services import open_store
    from taisu_etl.stages.fetch import fetch_shard

    with _opened(recipe) as (settings, ledger), _Progress(ledger, "fetch", shard, [State.TEXT_OK, State.FETCH_RETRY]) as progress:
        report = fetch_shard(ledger, open_store(settings), settings.fetch, settings.image, shard=shard,
                             ctx=_ctx(context, settings.recipe_version), lease_seconds=settings.pipeline.lease_seconds,
                             claim_wait_seconds=settings.pipeline.claim_wait_seconds)
        return _stage_done("fetch", shard, report, progress, report.claimed)


def dedup(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.dedup import dedup_shard

    with _opened(recipe) as (settings, ledger), _Progress(ledger, "dedup", shard, [State.FETCHED]) as progress:
        report = dedup_shard(ledger, open_store(settings), settings.image, shard=shard, ctx=_ctx(context, settings.recipe_version))
        return _stage_done("dedup", shard, report, progress, report.seen)


def score(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.score import score_shard

    with _opened(recipe) as (settings, ledger), _Progress(ledger, "score", shard, [State.IMAGE_OK]) as progress:
        report = score_shard(ledger, open_store(settings), settings.score, shard=shard,
                             ctx=_ctx(context, settings.recipe_version), lease_seconds=settings.pipeline.lease_seconds,
                             claim_wait_seconds=settings.pipeline.claim_wait_seconds, phash_distance=settings.image.phash_distance)
        return _stage_done("score", shard, report, progress, report.seen)


def caption(shard: int, recipe: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from taisu_etl.services import open_store
    from taisu_etl.stages.caption import caption_shard
    from taisu_etl.text import TextFilter

    with _opened(recipe) as (settings, ledger), _Progress(ledger, "caption", shard, [State.ACCEPTED]) as progress:
        report = caption_shard(ledger, open_store(settings), settings.caption, settings.score, TextFilter(settings.text),
                               shard=shard, ctx=_ctx(context, settings.recipe_version),
                               lease_seconds=settings.pipeline.lease_seconds,
                               claim_wait_seconds=settings.pipeline.claim_wait_seconds)
        return _stage_done("caption", shard, report, progress, report.seen)


def new_releasable_samples(score_reports: Sequence[Mapping[str, Any]] | None,
                           caption_reports: Sequence[Mapping[str, Any]] | None) -> dict[str, int]:
    """How many samples this run's score and caption tasks moved into a releasable state.

    Score's "ok" moves a sample to `accepted`; every caption outcome moves one to `captioned`
    (with or without a generated caption). Both states are what a release selects.
    """
    accepted = sum(int((r.get("reasons") or {}).get("ok", 0)) for r in score_reports or () if r)
    captioned = sum(sum(int(n) for n in (r.get("reasons") or {}).values()) for r in caption_reports or () if r)
    log.info("this run accepted %s samples and captioned %s", f"{accepted:,}", f"{captioned:,}")
    return {"accepted": accepted, "captioned": captioned}


def release_name_for(context: Mapping[str, Any] | None) -> str:
    """The name of a release whose form left `name` empty: `taisu-YYYYMMDD-HHMMSS` of the run (UTC).

    Taken from the DAG run's `run_after`, which a cleared or retried task sees unchanged, so every
    try of one run builds the same release.
    """
    run = context.get("dag_run") if context else None
    when = getattr(run, "run_after", None) or (context or {}).get("logical_date") or datetime.now(UTC)
    return f"taisu-{when.astimezone(UTC):%Y%m%d-%H%M%S}"


def recipe_of_run(recipe: str | None, context: Mapping[str, Any] | None) -> str | None:
    """The recipe a run uses: its own parameter, else the recipe of the pipeline run that triggered it.

    A release that the pipeline's asset event started must read the ledger that pipeline wrote,
    so the event carries the pipeline's recipe. Events of runs with different recipes are refused.
    """
    if recipe:
        return recipe
    run = context.get("dag_run") if context else None
    found = {
        (event.extra or {}).get("recipe")
        for event in getattr(run, "consumed_asset_events", None) or ()
        if event.asset.uri == RELEASABLE_SAMPLES_URI
    }
    found.discard(None)
    if len(found) > 1:
        raise ConfigError(f"this run was triggered by pipeline runs with different recipes ({', '.join(sorted(found))}): "
                          "trigger it by hand with the `recipe` parameter set")
    return found.pop() if found else None


def release_create(name: str | None, options: Mapping[str, Any], recipe: str | None = None,
                   context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build and publish a release from the release DAG's form (empty fields take the defaults).

    An empty `name` becomes `release_name_for(context)`. A re-run of this task (retry or clear)
    that finds the release already published by an earlier try of the same DAG run, with the
    same options, returns it instead of failing: the earlier try did the work (and may have died
    between writing the manifest and recording it). Any other published release of that name is
    refused, as releases are immutable.
    """
    from taisu_etl.release import LATEST, ReleaseExistsError, ReleaseOptions, create_release
    from taisu_etl.release.card_config import card_record
    from taisu_etl.release.options import OPEN_CLIP_DEFAULT_WORKERS
    from taisu_etl.services import open_store

    name = name or release_name_for(context)
    recipe = recipe_of_run(recipe, context)
    opts = {k: v for k, v in options.items() if v not in (None, "", "None")}
    release_options = ReleaseOptions(
        min_score=float(opts["min_score"]) if "min_score" in opts else None,
        generated_captions=bool(opts.get("with_generated_captions", True)),
        sources=tuple(opts.get("sources") or ()),
        formats=tuple(opts.get("formats") or ("taisu", "webdataset", "parquet")),
        tgz=bool(opts.get("tgz", False)),
        shard_size=int(opts.get("shard_size", 10_000)),
        parent=opts.get("parent") or LATEST,
        min_shards=int(opts.get("min_shards", OPEN_CLIP_DEFAULT_WORKERS)),
        wds_captions=str(opts.get("wds_captions", "both")),
        source_root=opts.get("source_root"),
    )
    with _opened(recipe) as (settings, ledger):
        store = open_store(settings)
        try:
            report = create_release(ledger, store, name, release_options,
                                    ctx=_ctx(context, settings.recipe_version), progress=log.info,
                                    card_info=card_record(settings.release, settings.score))
        except ReleaseExistsError:
            earlier = _published_by_this_run(ledger, store, name, release_options, context)
            if earlier is None:
                raise
            log.info("release %s: already published by an earlier try of this run (%s samples, manifest %s): "
                     "nothing to rebuild", name, f"{earlier['samples']:,}", earlier["manifest_key"])
            return {**earlier, "recipe": recipe}
        return {**_finish(report), "recipe": recipe}


def _published_by_this_run(ledger: Ledger, store: ObjectStore, name: str, options: ReleaseOptions,
                           context: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What an earlier try of this DAG run published as `name` with these options, else None."""
    from taisu_etl.release import LATEST, read_manifest
    from taisu_etl.release import layout, records

    run_after = getattr(context.get("dag_run") if context else None, "run_after", None)
    manifest_key = layout.key(name, layout.MANIFEST)
    info = store.stat(manifest_key)
    manifest = read_manifest(store, name)
    if run_after is None or info is None or manifest is None:
        return None
    # The manifest is the release's commit point: written at or after this run began means this
    # run wrote it (store times have whole seconds on S3). A later run of another name-sake is refused.
    if info.last_modified < run_after.replace(microsecond=0):
        return None
    recorded = manifest.get("recipe") or {}
    parent = recorded.get("parent") if options.parent == LATEST else options.parent
    if options.recipe(parent) != recorded:
        return None
    row = records.get(ledger.engine, name)
    counts = manifest.get("counts") or {}
    files = manifest.get("files") or []
    return {
        "name": name, "release_id": row["id"] if row else None, "samples": counts.get("samples", 0),
        "shards": counts.get("shards", 0), "added": counts.get("added", 0), "removed": counts.get("removed", 0),
        "parent": recorded.get("parent"), "files": len(files), "bytes": sum(int(f.get("bytes", 0)) for f in files),
        "manifest_key": manifest_key, "card_key": layout.key(name, layout.README), "store": store.describe(),
        "already_published": True,
    }


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


def release_dead_leases(dry_run: bool, recipe: str | None = None) -> dict[str, Any]:
    """Free the sample leases of provably dead owners and the expired ones (or, in a dry run, list them)."""
    from taisu_etl.db.leases import release_dead_leases as release

    with _opened(recipe) as (_, ledger):
        freed = release(ledger, dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    for holding in freed:
        log.info("%s: %s (%s)", verb, holding.describe(), "owner dead" if holding.dead else "expired")
    samples = sum(h.samples for h in freed)
    log.info("leases: %s %d leases holding %s samples%s", verb, len(freed), f"{samples:,}", " (dry run)" if dry_run else "")
    return {"dry_run": dry_run, "leases": len(freed), "samples": samples, "freed": [h.as_dict() for h in freed]}


def remove_orphan_objects(min_age_hours: float, dry_run: bool, recipe: str | None = None) -> dict[str, Any]:
    """Remove the images no sample names that are older than the grace period (see taisu_etl.maintenance)."""
    from taisu_etl.maintenance import remove_orphan_objects as sweep
    from taisu_etl.services import open_store

    with _opened(recipe) as (settings, ledger):
        report = sweep(ledger, open_store(settings), min_age=timedelta(hours=float(min_age_hours)), dry_run=dry_run,
                       progress=log.info)
    for key in report.keys[:20]:
        log.info("orphan: %s", key)
    result = _finish(report)
    result["keys"] = report.keys[:100]  # XCom stays small; the log has the summary
    return result


def _form_image(kind: str | None, value: str) -> bytes | None:
    if kind != "image":
        return None
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise InputError(value, f"cannot read the image file ({exc.strerror or exc}): give a path the workers can read") from None


def takedown_file(params: Mapping[str, Any]) -> int | None:
    """File the request the DAG's form describes (an `image` value is a file path on the worker).

    None when the form names no request (a scheduled run) or asks for a dry run (nothing is filed).
    """
    from taisu_etl.takedown.requests import file_request

    kind, value = params.get("kind"), (params.get("value") or "").strip()
    if not kind and not value:
        log.info("takedown: no request in the form; processing the queued ones")
        return None
    if params.get("dry_run"):
        log.info("takedown: dry run: the request is previewed, not filed")
        return None
    if not kind or not value or not (params.get("requester") or "").strip():
        raise ConfigError("a takedown request needs a selector kind, a value and a requester: fill all three in the form")
    image = _form_image(kind, value)
    with _opened(params.get("recipe")) as (settings, ledger):
        rid = file_request(ledger, str(kind), Path(value).name if image is not None else value, requester=params["requester"],
                           contact=params.get("contact"), reason=params.get("reason"), reference=params.get("reference"),
                           channel="airflow", image=image, image_config=settings.image)
    log.info("takedown request %d filed (%s %s)", rid, kind, value)
    return rid


def takedown_process(request_id: int | None, params: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> list[int]:
    """Process one request (or every open one): match, take down, delete, patch releases; returns the ids for `takedown_verify`.

    With `dry_run` in `params`, only reports what the form's selector (or every open request) would remove.
    """
    from taisu_etl.services import open_store
    from taisu_etl.takedown.process import preview_request, process_open, process_requests
    from taisu_etl.takedown.requests import open_requests, parse_selector

    dry_run, withdraw = bool(params.get("dry_run")), bool(params.get("withdraw"))
    with _opened(params.get("recipe")) as (settings, ledger):
        store = open_store(settings)
        store.check()
        ctx = _ctx(context, settings.recipe_version)
        common = dict(max_distance=settings.image.phash_distance, withdraw=withdraw, progress=log.info)
        if dry_run and params.get("kind"):
            value = (params.get("value") or "").strip()
            image = _form_image(params["kind"], value)
            selector = parse_selector(params["kind"], Path(value).name if image is not None else value, image=image,
                                      image_config=settings.image)
            reports = [preview_request(ledger, store, selector, **common)]  # type: ignore[arg-type]
        elif dry_run:
            ids = [r["id"] for r in open_requests(ledger)]
            reports = process_requests(ledger, store, ids, dry_run=True, ctx=ctx, **common) if ids else []  # type: ignore[arg-type]
        elif request_id is not None:
            reports = process_requests(ledger, store, [request_id], verify=False, ctx=ctx, **common)  # type: ignore[arg-type]
        else:
            reports = process_open(ledger, store, verify=False, ctx=ctx, **common)  # type: ignore[arg-type]
    for report in reports:
        log.info("%s", report.summary())
    if not reports:
        log.info("takedown: no open requests")
    return [] if dry_run else [r.request_id for r in reports]


def takedown_verify(request_ids: Sequence[int], recipe: str | None = None) -> dict[str, Any]:
    """Stat every deleted key and version of the requests and record the result; fails when anything remains."""
    from taisu_etl.services import open_store
    from taisu_etl.takedown.errors import TakedownError
    from taisu_etl.takedown.verification import verify_requests

    if not request_ids:
        log.info("takedown: nothing to verify")
        return {"verified": [], "problems": {}}
    with _opened(recipe) as (settings, ledger):
        reports = verify_requests(ledger, open_store(settings), list(request_ids), progress=log.info)
    for rid, report in reports.items():
        log.info("request %d: %s", rid, report.summary())
    bad = {rid: r.problems for rid, r in reports.items() if not r.ok}
    if bad:
        raise TakedownError(f"request(s) {', '.join(map(str, bad))} did not verify: {next(iter(bad.values()))[0]}")
    return {"verified": sorted(reports), "problems": {}}


def shards_in(states: str | list[str], recipe: str | None = None) -> list[int]:
    """The shards a mapped stage task must cover: those with samples waiting in any of `states`."""
    wanted = [states] if isinstance(states, str) else states
    with _opened(recipe) as (_, ledger):
        shards = sorted({shard for s in wanted for shard in ledger.shards_with(State(s))})
    log.info("%d shards have samples in %s: %s", len(shards), " or ".join(wanted), shards or "none")
    return shards


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
