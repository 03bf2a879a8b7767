"""`taisu-etl release ...`: create, verify, diff, list and withdraw releases.

Mounted by taisu_etl/cli.py; user errors are TaisuError subclasses, which its `main()` prints as
one `error: ...` line with exit status 2, like every other command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from taisu_etl.config import load_settings

release_app = typer.Typer(help="Versioned, reproducible dataset releases (TaiSu tars, webdataset, Parquet).", no_args_is_help=True)

RecipeOpt = Annotated[
    Optional[Path],
    typer.Option("--recipe", "-r", help="TOML recipe file (else $TAISU_RECIPE; TAISU_* variables override it)."),
]


def _formats(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@release_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="release name, e.g. v1 or 2024-06")],
    recipe: RecipeOpt = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="keep samples with score >= this")] = None,
    formats: Annotated[str, typer.Option("--formats", help="comma-separated: taisu,webdataset,parquet")] = "taisu,webdataset,parquet",
    generated_captions: Annotated[bool, typer.Option("--generated-captions/--no-generated-captions",
                                                     help="include generated captions (g) where present")] = True,
    source: Annotated[Optional[list[str]], typer.Option("--source", help="glob on the sample's source; repeat")] = None,
    tgz: Annotated[bool, typer.Option("--tgz/--no-tgz", help="gzip the TaiSu image parts (.tgz)")] = False,
    shard_size: Annotated[int, typer.Option("--shard-size", help="samples per shard")] = 10_000,
    parent: Annotated[Optional[str], typer.Option("--parent", help="release to compare with (default: the latest published)")] = None,
    no_parent: Annotated[bool, typer.Option("--no-parent", help="no removal list: compare with nothing")] = False,
    min_shards: Annotated[int, typer.Option(
        "--min-shards", help="split a small release into at least this many shards (open_clip_train needs "
        "shards >= --workers x GPUs; its --workers defaults to 4)")] = 4,
    wds_captions: Annotated[str, typer.Option(
        "--wds-captions", help="webdataset captions: w (.txt = web caption), g (.txt = generated, else web), "
        "both (.txt = web, .gen.txt = generated)")] = "both",
    source_root: Annotated[Optional[Path], typer.Option(
        "--source-root", help="publish each sample's source relative to this folder (default: the file name only)")] = None,
) -> None:
    """Package the accepted samples as release NAME under releases/NAME/ in the object store.

    One run at a time per name: another run of NAME is refused while this one builds. Files are
    built under <TAISU home>/tmp; folders that killed runs left there go at the next run.
    """
    from taisu_etl.release.build import create_release
    from taisu_etl.release.card_config import card_record
    from taisu_etl.release.errors import ReleaseError
    from taisu_etl.release.options import LATEST, ReleaseOptions
    from taisu_etl.services import open_ledger, open_store

    if no_parent and parent:
        raise ReleaseError("--parent and --no-parent contradict each other: give one")
    options = ReleaseOptions(
        min_score=min_score, generated_captions=generated_captions, sources=tuple(source or ()), formats=_formats(formats),
        tgz=tgz, shard_size=shard_size, parent=None if no_parent else (parent or LATEST), min_shards=min_shards,
        wds_captions=wds_captions, source_root=str(source_root) if source_root is not None else None,
    )
    settings = load_settings(recipe)
    ledger = open_ledger(settings)
    try:
        store = open_store(settings)
        store.check()
        # A silent run on another node is taken over after the same time a stage's silent lease runs out.
        create_release(ledger, store, name, options, progress=typer.echo, workdir=settings.home / "tmp",
                       stale_after=float(settings.pipeline.lease_seconds),
                       card_info=card_record(settings.release, settings.score))
    finally:
        ledger.dispose()
    where = settings.objects_root / "releases" / name if settings.store == "local" else None
    if where is not None:
        typer.echo(f"release folder:  {where}\ndataset card:    {where / 'README.md'}")
    else:
        typer.echo(f"release folder:  {store.describe()} releases/{name}/\ndataset card:    releases/{name}/README.md")


@release_app.command("verify")
def verify(
    name: Annotated[str, typer.Argument(help="release name")],
    recipe: RecipeOpt = None,
    no_ledger: Annotated[bool, typer.Option("--no-ledger", help="check the files only, not takedowns in the ledger")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Re-hash every file of release NAME, recount its members, and check no member was taken down."""
    from taisu_etl.release.errors import ReleaseError, ReleaseNotFoundError
    from taisu_etl.release.verify import verify_release
    from taisu_etl.services import open_ledger, open_store

    settings = load_settings(recipe)
    store = open_store(settings)
    ledger = None if no_ledger else open_ledger(settings)
    try:
        typer.echo(f"verifying release {name} in {store.describe()} ...", err=True)
        report = verify_release(store, name, ledger=ledger)
    finally:
        if ledger is not None:
            ledger.dispose()
    if report.withdrawn:
        typer.echo(report.summary())
        raise ReleaseError(f"release {name} was withdrawn: there is nothing to verify")
    if not report.exists:
        building = f": it is being created by {report.staging_holder}" if report.staging_holder else ""
        raise ReleaseNotFoundError(f"release {name} does not exist in {store.describe()} (no releases/{name}/manifest.json){building}")
    typer.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if as_json else report.summary())
    if not report.ok:
        raise ReleaseError(f"release {name} failed verification: {len(report.problems)} problem(s), listed above")


@release_app.command("diff")
def diff(
    a: Annotated[str, typer.Argument(help="the older release: NAME, or NAME@N for version N of a patched release")],
    b: Annotated[str, typer.Argument(help="the newer release: NAME (its current version) or NAME@N")],
    recipe: RecipeOpt = None,
    ids: Annotated[bool, typer.Option("--ids", help="print every added (+id) and removed (-id) id")] = False,
) -> None:
    """Ids added and removed going from release A to release B (`diff NAME@1 NAME`: what takedowns removed)."""
    from taisu_etl.release.diff import diff_releases, iter_diff
    from taisu_etl.services import open_store

    store = open_store(load_settings(recipe))
    if ids:
        for sign, sid in iter_diff(store, a, b):
            typer.echo(f"{sign}{sid}")
        return
    typer.echo(diff_releases(store, a, b).summary())


@release_app.command("list")
def list_releases(recipe: RecipeOpt = None) -> None:
    """Releases recorded in the ledger, with their state, version and whether their manifest is in the store."""
    from taisu_etl.release import layout, records
    from taisu_etl.services import open_ledger, open_store

    settings = load_settings(recipe)
    ledger = open_ledger(settings)
    try:
        rows = records.all_releases(ledger.engine)
    finally:
        ledger.dispose()
    if not rows:
        typer.echo("no releases yet: run `taisu-etl release create NAME`")
        return
    store = open_store(settings)
    w = max(len("name"), *(len(r["name"]) for r in rows)) + 2
    pw = max(len("parent"), *(len(r["parent_name"] or "-") for r in rows)) + 2
    typer.echo(f"{'name':<{w}}{'state':<11}{'version':>7}{'samples':>10}  {'parent':<{pw}}{'published (UTC)':<21}manifest")
    for r in rows:
        samples = (r["counts"] or {}).get("samples")
        published = r["published_at"].strftime("%Y-%m-%d %H:%M:%S") if r["published_at"] else "-"
        there = "present" if store.exists(layout.key(r["name"], layout.MANIFEST)) else "absent"
        if r["withdrawn_at"] is not None:
            there += f" (withdrawn {r['withdrawn_at'].strftime('%Y-%m-%d %H:%M:%S')})"
        if r["state"] == records.STAGING:
            there += f" (being created by {records.holder(r)})"
        version = r["version"] if r["state"] in (records.PUBLISHED, records.WITHDRAWN) else "-"
        typer.echo(f"{r['name']:<{w}}{r['state']:<11}{version:>7}{samples if samples is not None else '-':>10}  "
                   f"{r['parent_name'] or '-':<{pw}}{published:<21}{there}")


@release_app.command("withdraw")
def withdraw(
    name: Annotated[str, typer.Argument(help="release name")],
    recipe: RecipeOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="withdraw it; without this, only say what would be deleted")] = False,
) -> None:
    """Delete every object of release NAME (every stored version), manifest first, and mark it withdrawn.

    For a release that must not be rewritten by a takedown patch; the name stays retired.
    """
    from taisu_etl.release import layout
    from taisu_etl.release.patch import withdraw_release
    from taisu_etl.services import open_ledger, open_store

    settings = load_settings(recipe)
    ledger = open_ledger(settings)
    try:
        store = open_store(settings)
        if not yes:
            from taisu_etl.release import records
            from taisu_etl.release.errors import ReleaseNotFoundError

            row = records.get(ledger.engine, layout.check_name(name))
            if row is None:
                raise ReleaseNotFoundError(f"release {name} is not in the ledger: check the name with `taisu-etl release list`")
            keys = sum(1 for _ in store.list(layout.prefix(name)))
            typer.echo(f"release {name} ({row['state']}, version {row['version']}): would delete {keys} objects under "
                       f"{layout.prefix(name)} in {store.describe()} (every stored version) and mark it withdrawn; "
                       "nothing done: add --yes to withdraw it")
            return
        withdraw_release(ledger, store, name, progress=typer.echo)
    finally:
        ledger.dispose()
