"""The `taisu-etl` command line. Every user-fixable failure ends as one `error:` line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from taisu_etl.config import Settings, load_settings
from taisu_etl.errors import TaisuError

if TYPE_CHECKING:
    from taisu_etl.db.ledger import Ledger

app = typer.Typer(
    help="taisu-etl: build Chinese image-text datasets the way TaiSu was built, tracked sample by sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The ledger database: schema and migrations.", no_args_is_help=True)
storage_app = typer.Typer(help="The object store (local folder or MinIO/S3).", no_args_is_help=True)
config_app = typer.Typer(help="Settings and recipes.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(storage_app, name="storage")
app.add_typer(config_app, name="config")


def _show_progress() -> None:
    """Our progress lines at INFO on stderr; other libraries' (alembic's plugin set-up, ...) only from WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("taisu_etl").setLevel(logging.INFO)


def _mount_subcommands() -> None:
    # Their modules import no torch at import time, so `taisu-etl --help` stays fast.
    from taisu_etl.deploy.cli import airflow_app
    from taisu_etl.leases_cli import leases_app
    from taisu_etl.models.cli import models_app, tokenizer_app
    from taisu_etl.release.cli import release_app
    from taisu_etl.takedown.cli import takedown_app

    app.add_typer(tokenizer_app, name="tokenizer")
    app.add_typer(models_app, name="models")
    app.add_typer(release_app, name="release")
    app.add_typer(leases_app, name="leases")
    app.add_typer(airflow_app, name="airflow")
    app.add_typer(takedown_app, name="takedown")


_mount_subcommands()

RecipeOpt = Annotated[
    Optional[Path],
    typer.Option("--recipe", "-r", help="TOML recipe file (else $TAISU_RECIPE; TAISU_* variables override it)."),
]


def _settings(recipe: Path | None) -> Settings:
    return load_settings(recipe)


@db_app.command("upgrade")
def db_upgrade(recipe: RecipeOpt = None) -> None:
    """Create or migrate the ledger schema to the newest revision (safe to run again)."""
    from taisu_etl.db.engine import check_connection, make_engine
    from taisu_etl.db.migrate import upgrade

    settings = _settings(recipe)
    engine = make_engine(settings.ledger_url)
    check_connection(engine)
    before, after = upgrade(engine)
    was = "already current" if before == after else f"was {before or 'empty'}"
    typer.echo(f"ledger {settings.ledger_url_safe}: schema revision {after} ({was})")


@db_app.command("ddl")
def db_ddl() -> None:
    """Print the Postgres DDL of every migration (what sql/001_schema.sql holds)."""
    from taisu_etl.db.migrate import render_postgres_ddl

    sys.stdout.write(render_postgres_ddl())


@app.command("status")
def status(recipe: RecipeOpt = None, as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Print the funnel: samples per state, why the rest were dropped, and the leases held (by whom, until when)."""
    from taisu_etl.db.leases import lease_holders
    from taisu_etl.leases_cli import format_holdings
    from taisu_etl.reports import format_funnel, format_incomplete, incomplete_inputs
    from taisu_etl.services import open_ledger

    settings = _settings(recipe)
    ledger = open_ledger(settings)
    funnel, reasons, issues = ledger.funnel(), ledger.reason_counts(), ledger.issue_counts()
    incomplete = incomplete_inputs(ledger) if any(reason == "truncated_input" for _, reason, _ in issues) else []
    leases = lease_holders(ledger)
    if as_json:
        typer.echo(json.dumps({"funnel": funnel, "reasons": [list(r) for r in reasons], "ingest_issues": [list(i) for i in issues],
                               "incomplete_inputs": [{"source": s, "after": p, "detail": d} for s, p, d in incomplete],
                               "leases": [h.as_dict() for h in leases]}, ensure_ascii=False))
    else:
        typer.echo(f"ledger {settings.ledger_url_safe}")
        typer.echo(format_funnel(funnel, reasons))
        if issues:
            typer.echo("\nsource rows that did not become samples:")
            for source, reason, n in issues:
                typer.echo(f"  {source}: {reason} {n:,}")
        if incomplete:
            typer.echo("\n" + format_incomplete(incomplete))
        if leases:
            typer.echo("\nleases held (`taisu-etl leases release --dead` frees those of dead owners):")
            typer.echo(format_holdings(leases))


@app.command("ingest")
def ingest(
    files: Annotated[list[Path], typer.Argument(help="URL/caption lists: CSV/TSV (Wukong), JSON lines, Parquet (LAION); .gz works")],
    recipe: RecipeOpt = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv | tsv | jsonl | parquet (default: detected)")] = None,
    url_column: Annotated[str, typer.Option(help="column holding the URL (LAION's URL is found by itself)")] = "url",
    caption_column: Annotated[str, typer.Option(help="column holding the caption (LAION's TEXT is found by itself)")] = "caption",
) -> None:
    """Add the (URL, caption) pairs of each file to the ledger; bad rows are counted with file and line."""
    from taisu_etl.services import open_ledger
    from taisu_etl.stages.ingest import ingest_file

    _show_progress()
    settings = _settings(recipe)
    ledger = open_ledger(settings)
    for path in files:
        report = ingest_file(ledger, path, fmt=fmt, url_column=url_column, caption_column=caption_column,
                             batch_size=settings.pipeline.batch_size)
        typer.echo(report.summary())


@app.command("ingest-taisu")
def ingest_taisu_cmd(
    archive: Annotated[list[Path], typer.Option("--archive", "-a", help="TaiSu image archive (.tar/.tgz/.tar.gz); repeat")],
    captions: Annotated[list[Path], typer.Option("--captions", "-c", help="TaiSu caption file (JSON object, JSON lines or TXT); repeat")],
    recipe: RecipeOpt = None,
) -> None:
    """Ingest TaiSu's own release: images into the object store, captions (w, g) into the ledger."""
    from taisu_etl.services import open_ledger, open_store
    from taisu_etl.stages.ingest import ingest_taisu

    settings = _settings(recipe)
    report = ingest_taisu(open_ledger(settings), open_store(settings), archive, captions)
    typer.echo(report.summary())


@app.command("text-filter")
def text_filter_cmd(
    recipe: RecipeOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="only this shard (default: all)")] = None,
) -> None:
    """Run the caption rules on every ingested sample: text_ok or text_rejected, one event each."""
    from taisu_etl.services import open_ledger
    from taisu_etl.stages.text_filter import filter_shard
    from taisu_etl.text import TextFilter

    settings = _settings(recipe)
    report = filter_shard(open_ledger(settings), TextFilter(settings.text), shard=shard, batch_size=settings.pipeline.batch_size)
    typer.echo(report.summary())


@app.command("fetch")
def fetch_cmd(
    recipe: RecipeOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="only this shard (default: all)")] = None,
) -> None:
    """Download text_ok samples safely and politely; store images, record every failure with its reason."""
    from taisu_etl.images._launch import start_fork_server

    start_fork_server()  # the decode workers' imports overlap with the ones below
    from taisu_etl.services import open_ledger, open_store
    from taisu_etl.stages.fetch import fetch_shard

    _show_progress()
    settings = _settings(recipe)
    report = fetch_shard(open_ledger(settings), open_store(settings), settings.fetch, settings.image, shard=shard,
                         lease_seconds=settings.pipeline.lease_seconds, claim_wait_seconds=settings.pipeline.claim_wait_seconds)
    typer.echo(report.summary())


@app.command("dedup")
def dedup_cmd(
    recipe: RecipeOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="only this shard (default: all)")] = None,
) -> None:
    """Image checks and duplicates: fetched samples become image_ok or duplicate (exact and near)."""
    from taisu_etl.services import open_ledger, open_store
    from taisu_etl.stages.dedup import dedup_shard

    settings = _settings(recipe)
    typer.echo(dedup_shard(open_ledger(settings), open_store(settings), settings.image, shard=shard).summary())


@app.command("score")
def score_cmd(
    recipe: RecipeOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="only this shard (default: all)")] = None,
) -> None:
    """Image-text retrieval filtering: image_ok samples become accepted or score_rejected, scored with the model id."""
    from taisu_etl.services import open_ledger, open_store
    from taisu_etl.stages.score import score_shard

    _show_progress()
    settings = _settings(recipe)
    report = score_shard(open_ledger(settings), open_store(settings), settings.score, shard=shard,
                         lease_seconds=settings.pipeline.lease_seconds, claim_wait_seconds=settings.pipeline.claim_wait_seconds,
                         phash_distance=settings.image.phash_distance)
    typer.echo(report.summary())


@app.command("caption")
def caption_cmd(
    recipe: RecipeOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="only this shard (default: all)")] = None,
) -> None:
    """Generated captions (TaiSu's g) for accepted samples, filtered and checked by retrieval."""
    from taisu_etl.services import open_ledger, open_store
    from taisu_etl.stages.caption import caption_shard
    from taisu_etl.text import TextFilter

    _show_progress()
    settings = _settings(recipe)
    report = caption_shard(open_ledger(settings), open_store(settings), settings.caption, settings.score,
                           TextFilter(settings.text), shard=shard, lease_seconds=settings.pipeline.lease_seconds,
                           claim_wait_seconds=settings.pipeline.claim_wait_seconds)
    typer.echo(report.summary())


@app.command("recheck")
def recheck_cmd(
    recipe: RecipeOpt = None,
    limit: Annotated[int, typer.Option(help="how many stored samples to check (least recently checked first)")] = 1000,
    rate: Annotated[float, typer.Option(help="requests per second, overall")] = 10.0,
) -> None:
    """Re-validate stored samples' URLs: alive, expired, or changed (recorded as a new candidate)."""
    from taisu_etl.services import open_ledger
    from taisu_etl.stages.recheck import recheck

    settings = _settings(recipe)
    typer.echo(recheck(open_ledger(settings), settings.fetch, settings.image, limit=limit, rate=rate).summary())


@app.command("reasons")
def reasons() -> None:
    """List the closed vocabulary of reason codes the ledger records."""
    from taisu_etl.vocab import REASONS

    for code, (stage, meaning) in REASONS.items():
        typer.echo(f"{stage.value:<9} {code:<20} {meaning}")


@config_app.command("show")
def config_show(recipe: RecipeOpt = None) -> None:
    """Print the effective settings as JSON, secrets masked."""
    typer.echo(json.dumps(_settings(recipe).redacted(), indent=2, ensure_ascii=False))


@storage_app.command("check")
def storage_check(recipe: RecipeOpt = None) -> None:
    """Check that the object store is reachable and its bucket exists."""
    from taisu_etl.services import open_store

    store = open_store(_settings(recipe))
    store.check()
    typer.echo(f"object store {store.describe()}: ok")


@storage_app.command("orphans")
def storage_orphans(
    recipe: RecipeOpt = None,
    delete: Annotated[bool, typer.Option("--delete", help="delete them (every version); without it, only list")] = False,
    min_age_hours: Annotated[float, typer.Option(min=0.0, help="grace period: younger images are never touched (a fetch stores an image before its ledger row lands)")] = 6.0,
) -> None:
    """Images under images/ that no sample names (what the taisu_maintenance DAG removes daily)."""
    from datetime import timedelta

    from taisu_etl.maintenance import remove_orphan_objects
    from taisu_etl.services import open_ledger, open_store

    _show_progress()
    settings = _settings(recipe)
    report = remove_orphan_objects(open_ledger(settings), open_store(settings), min_age=timedelta(hours=min_age_hours),
                                   dry_run=not delete, progress=typer.echo)
    for key in report.keys:
        typer.echo(f"  {key}")
    typer.echo(report.summary())


@storage_app.command("init")
def storage_init(recipe: RecipeOpt = None) -> None:
    """Create the bucket (versioned, so takedowns can prove every version is gone) if missing."""
    from taisu_etl.services import open_store

    store = open_store(_settings(recipe), create_bucket=True)
    store.check()
    typer.echo(f"object store {store.describe()}: ready")


@app.command("demo")
def demo(
    recipe: RecipeOpt = None,
    release_name: Annotated[Optional[str], typer.Option("--release", help="name of the demo release (default: demo-<time>)")] = None,
) -> None:
    """The main job: start a synthetic web on 127.0.0.1, run the pipeline DAG on it (ingest, text
    filter, fetch, checks/dedup, score, caption) and the release DAG, with embedded defaults (SQLite
    ledger, local object store under ./var); print the funnel and where the release is; then a
    rights holder's takedown of one released image (the takedown DAG) and its audit trail."""
    import os
    import time

    from taisu_etl.airflow_local import run_dag
    from taisu_etl.demo import demo_web, write_demo_sources
    from taisu_etl.reports import format_funnel
    from taisu_etl.services import open_ledger

    # Few shards: the demo has about a hundred images, and TaiSu's rule needs groups to rank within.
    os.environ.setdefault("TAISU_PIPELINE__SHARDS", "2")
    settings = _settings(recipe)
    name = release_name or time.strftime("demo-%Y%m%d-%H%M%S")
    recipe_arg = str(recipe.resolve()) if recipe else ""
    with demo_web() as web:
        sources = write_demo_sources(web, settings.home / "demo")
        # The one loopback host the fetcher may use; every other local or private address stays refused.
        os.environ["TAISU_FETCH__ALLOW_LOOPBACK"] = json.dumps([web.netloc])
        os.environ.setdefault("TAISU_FETCH__PER_HOST_RATE", "200")
        os.environ.setdefault("TAISU_FETCH__PER_HOST_CONCURRENCY", "16")
        os.environ.setdefault("TAISU_FETCH__DEADLINE_S", "5")
        typer.echo(f"synthetic web: {web.base_url}  (URL lists in {settings.home / 'demo'})")
        typer.echo(f"ledger: {settings.ledger_url_safe}\nobject store: {settings.store} "
                   f"({settings.objects_root if settings.store == 'local' else settings.s3_endpoint})")
        typer.echo(f"running the taisu_pipeline DAG with Airflow (dag.test); its log: {settings.home / 'airflow' / 'taisu_pipeline.log'}")
        conf = {"sources": [str(p.resolve()) for p in sources], "recipe": recipe_arg}
        run_dag("taisu_pipeline", conf, settings.home / "airflow")
    typer.echo(f"running the taisu_release DAG: release {name!r}; its log: {settings.home / 'airflow' / 'taisu_release.log'}")
    run_dag("taisu_release", {"name": name, "recipe": recipe_arg, "tgz": True}, settings.home / "airflow")
    ledger = open_ledger(settings)
    typer.echo("\nfunnel (how many samples each stage kept, and why the rest were dropped):")
    typer.echo(format_funnel(ledger.funnel(), ledger.reason_counts()))
    _demo_takedown(settings, ledger, name, recipe_arg)
    if settings.db_url is None:
        typer.echo(f"\nask the ledger:   sqlite3 {settings.home / 'ledger.db'} 'SELECT * FROM v_rejections'")
    if settings.store == "local":
        where = settings.objects_root / "releases" / name
        typer.echo(f"stored images:    {settings.objects_root / 'images'}")
        typer.echo(f"release:          {where}  (manifest.json, SHA256SUMS, TaiSu parts, webdataset, Parquet)")
        typer.echo(f"dataset card:     {where / 'README.md'}")
    else:
        typer.echo(f"release:          s3://{settings.s3_bucket}/releases/{name}/  (dataset card: README.md there)")
    typer.echo(f"check it:         taisu-etl release verify {name}")


def _demo_takedown(settings: Settings, ledger: Ledger, release: str, recipe_arg: str) -> None:
    """The demo's last act: a rights holder asks to remove one image of the new release."""
    from taisu_etl.airflow_local import run_dag
    from taisu_etl.release import layout
    from taisu_etl.services import open_store
    from taisu_etl.takedown.audit import audit_trail, format_trail, list_requests

    store = open_store(settings)
    member = store.get(layout.key(release, layout.IDS)).decode().split("\n", 1)[0]
    typer.echo(f"\nrunning the taisu_takedown DAG: a rights holder asks to remove sample {member} of release {release}; "
               f"its log: {settings.home / 'airflow' / 'taisu_takedown.log'}")
    conf = {"kind": "sample", "value": member, "requester": "demo rights holder", "reason": "copyright (demo)",
            "reference": f"demo-{release}", "recipe": recipe_arg}
    run_dag("taisu_takedown", conf, settings.home / "airflow")
    request = next(r for r in list_requests(ledger) if r["value"] == member)
    typer.echo("\ntakedown audit trail (taisu-etl takedown show " + str(request["id"]) + "):")
    typer.echo(format_trail(audit_trail(ledger, request["id"])))


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except TaisuError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
