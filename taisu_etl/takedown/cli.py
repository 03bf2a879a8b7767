"""`taisu-etl takedown ...`: file, import, process, verify, reject, list and show takedown requests.

Mounted by taisu_etl/cli.py; user errors are TaisuError subclasses, printed as one `error:` line
with exit status 2. A request that was processed but did not verify also exits 2, after its report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from taisu_etl.takedown.errors import TakedownError

if TYPE_CHECKING:
    from taisu_etl.takedown.process import TakedownReport

takedown_app = typer.Typer(
    help="Takedown requests from rights holders: file them, process them (samples, objects, releases), verify, audit.",
    no_args_is_help=True,
)

RecipeOpt = Annotated[
    Optional[Path],
    typer.Option("--recipe", "-r", help="TOML recipe file (else $TAISU_RECIPE; TAISU_* variables override it)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print what would be removed (samples, objects, releases); change nothing")]
WithdrawOpt = Annotated[bool, typer.Option("--withdraw", help="withdraw (delete) each release that holds a matched sample instead of patching it")]


def _open(recipe: Path | None):  # type: ignore[no-untyped-def]
    from taisu_etl.config import load_settings
    from taisu_etl.services import open_ledger, open_store

    settings = load_settings(recipe)
    ledger = open_ledger(settings)
    try:
        store = open_store(settings)
    except BaseException:
        ledger.dispose()
        raise
    return settings, ledger, store


def _print(reports: list["TakedownReport"], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], ensure_ascii=False, indent=2, default=str))
    else:
        for r in reports:
            typer.echo(r.summary())
    failed = [r.request_id for r in reports if not r.ok]
    if failed:
        raise TakedownError(
            f"request(s) {', '.join(map(str, failed))} did not verify (problems above): fix the cause and run "
            f"`taisu-etl takedown process {' '.join(map(str, failed))}` again"
        )


def _selector(sample: str | None, taisu_id: str | None, url: str | None, sha256: str | None, image: Path | None,
              domain: str | None) -> tuple[str, str, bytes | None]:
    given = [(k, v) for k, v in (("sample", sample), ("taisu_id", taisu_id), ("url", url), ("sha256", sha256),
                                 ("image", image), ("domain", domain)) if v is not None]
    if len(given) != 1:
        raise TakedownError("give exactly one of --sample, --taisu-id, --url, --sha256, --image, --domain")
    kind, value = given[0]
    if kind == "image":
        path = Path(value)  # type: ignore[arg-type]
        try:
            return kind, path.name, path.read_bytes()
        except OSError as exc:
            raise TakedownError(f"cannot read the image file {path} ({exc.strerror or exc})") from None
    return kind, str(value), None


@takedown_app.command("request")
def request_cmd(
    requester: Annotated[str, typer.Option("--requester", help="who asks: a person or an organisation (required)")],
    sample: Annotated[Optional[str], typer.Option("--sample", help="public sample id (url_id, 32 hex digits)")] = None,
    taisu_id: Annotated[Optional[str], typer.Option("--taisu-id", help="TaiSu's id of the pair")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="the image URL")] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="sha256 of the stored image")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="an image file: matched by content, re-hosted copies too")] = None,
    domain: Annotated[Optional[str], typer.Option("--domain", help="a host: every sample of it and its subdomains")] = None,
    contact: Annotated[Optional[str], typer.Option("--contact", help="how to reach the requester")] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", help="why (copyright, privacy, ...)")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="the requester's reference, e.g. an e-mail id")] = None,
    now: Annotated[bool, typer.Option("--now", help="process it at once (else the taisu_takedown DAG's next run does)")] = False,
    dry_run: DryRunOpt = False,
    withdraw: WithdrawOpt = False,
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """File one takedown request with exactly one selector (and process it with --now)."""
    from taisu_etl.takedown.process import preview_request, process_request
    from taisu_etl.takedown.requests import file_request, parse_selector

    kind, value, data = _selector(sample, taisu_id, url, sha256, image, domain)
    settings, ledger, store = _open(recipe)
    try:
        if dry_run:
            selector = parse_selector(kind, value, image=data, image_config=settings.image)
            report = preview_request(ledger, store, selector, max_distance=settings.image.phash_distance, withdraw=withdraw)
            _print([report], as_json)
            return
        rid = file_request(ledger, kind, value, requester=requester, contact=contact, reason=reason, reference=reference,
                           channel="cli", image=data, image_config=settings.image)
        typer.echo(f"takedown request {rid} filed ({kind} {value})", err=as_json)
        if not now:
            typer.echo(f"queued: `taisu-etl takedown process {rid}` or the taisu_takedown DAG's next run processes it", err=as_json)
            return
        store.check()
        _print([process_request(ledger, store, rid, max_distance=settings.image.phash_distance, withdraw=withdraw,
                                progress=lambda line: typer.echo(line, err=True))], as_json)
    finally:
        ledger.dispose()


@takedown_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="CSV with a header: kind,value,requester[,contact,reason,reference]")],
    now: Annotated[bool, typer.Option("--now", help="process the filed requests at once")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check every row and file nothing")] = False,
    recipe: RecipeOpt = None,
) -> None:
    """File every row of a CSV of requests; all or nothing (bad rows are listed by line).

    kind is one of sample, taisu_id, url, sha256, image (value: an image file path, relative to
    the CSV), domain. Importing the same file again files nothing twice.
    """
    from taisu_etl.takedown.process import process_requests
    from taisu_etl.takedown.requests import import_requests

    settings, ledger, store = _open(recipe)
    try:
        report = import_requests(ledger, file, image_config=settings.image, dry_run=dry_run)
        typer.echo(report.summary() if not dry_run or report.bad else f"{file}: every row is valid (dry run: nothing filed)")
        if report.bad:
            raise TakedownError(f"{file}: {len(report.bad)} bad row(s), listed above: correct them and import the file again")
        if now and report.filed:
            store.check()
            _print(process_requests(ledger, store, report.filed, max_distance=settings.image.phash_distance,
                                    progress=lambda line: typer.echo(line, err=True)), False)
    finally:
        ledger.dispose()


@takedown_app.command("process")
def process_cmd(
    ids: Annotated[Optional[list[int]], typer.Argument(help="request ids; none: every open request")] = None,
    dry_run: DryRunOpt = False,
    withdraw: WithdrawOpt = False,
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Process requests: match, take down, delete every object version, patch releases, verify."""
    from taisu_etl.takedown.process import process_open, process_requests

    settings, ledger, store = _open(recipe)
    try:
        store.check()
        say = lambda line: typer.echo(line, err=True)  # noqa: E731
        if ids:
            reports = process_requests(ledger, store, ids, max_distance=settings.image.phash_distance, dry_run=dry_run,
                                       withdraw=withdraw, progress=say)
        elif dry_run:
            from taisu_etl.takedown.requests import open_requests

            reports = process_requests(ledger, store, [r["id"] for r in open_requests(ledger)],
                                       max_distance=settings.image.phash_distance, dry_run=True, withdraw=withdraw, progress=say)
        else:
            reports = process_open(ledger, store, max_distance=settings.image.phash_distance, withdraw=withdraw, progress=say)
        if not reports:
            typer.echo("no open takedown requests")
        _print(reports, as_json)
    finally:
        ledger.dispose()


@takedown_app.command("verify")
def verify_cmd(
    ids: Annotated[list[int], typer.Argument(help="request ids")],
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check again that everything a request removed is gone (every key and version), and record it."""
    from taisu_etl.takedown.verification import verify_requests

    _, ledger, store = _open(recipe)
    try:
        reports = verify_requests(ledger, store, ids)
    finally:
        ledger.dispose()
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports.values()], ensure_ascii=False, indent=2))
    else:
        for rid, r in reports.items():
            typer.echo(f"request {rid}: {r.summary()}")
    bad = [rid for rid, r in reports.items() if not r.ok]
    if bad:
        raise TakedownError(f"request(s) {', '.join(map(str, bad))} did not verify: run `taisu-etl takedown process` on them")


@takedown_app.command("reject")
def reject_cmd(
    request_id: Annotated[int, typer.Argument(help="request id")],
    why: Annotated[str, typer.Option("--why", help="the reason, kept on the request")],
    recipe: RecipeOpt = None,
) -> None:
    """Close a received or matched request without acting on it; the request and the reason stay."""
    from taisu_etl.takedown.requests import reject

    _, ledger, _store = _open(recipe)
    try:
        reject(ledger, request_id, why)
    finally:
        ledger.dispose()
    typer.echo(f"request {request_id} rejected: {why}")


@takedown_app.command("list")
def list_cmd(
    status: Annotated[Optional[str], typer.Option("--status", help="only this status (received, matched, processed, verified, rejected)")] = None,
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every takedown request, newest first, with its status and what it matched."""
    from taisu_etl.takedown.audit import list_requests

    _, ledger, _store = _open(recipe)
    try:
        rows = list_requests(ledger, status)
    finally:
        ledger.dispose()
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2, default=str))
        return
    if not rows:
        typer.echo("no takedown requests" + (f" with status {status}" if status else ""))
        return
    typer.echo(f"{'id':>6}  {'received (UTC)':<20}{'status':<11}{'samples':>8}  {'selector':<50}requester")
    for r in rows:
        sel = f"{r['kind']} {r['value']}"
        typer.echo(f"{r['id']:>6}  {_ts(r['received_at']):<20}{r['status']:<11}{r['samples']:>8}  {sel[:48]:<50}{r['requester']}")


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value or "-")


@takedown_app.command("show")
def show_cmd(
    request_id: Annotated[int, typer.Argument(help="request id")],
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit trail of one request: the request, its matches, objects deleted, releases patched, verification."""
    from taisu_etl.takedown.audit import audit_trail, format_trail

    _, ledger, _store = _open(recipe)
    try:
        trail = audit_trail(ledger, request_id)
    finally:
        ledger.dispose()
    typer.echo(json.dumps(trail, ensure_ascii=False, indent=2, default=str) if as_json else format_trail(trail))
