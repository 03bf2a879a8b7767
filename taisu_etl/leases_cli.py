"""`taisu-etl leases`: who holds samples, and freeing the leases of processes that are gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer

from taisu_etl.errors import ConfigError

if TYPE_CHECKING:
    from taisu_etl.db.leases import LeaseHolding

leases_app = typer.Typer(help="Sample leases: who holds which samples until when; free those of dead owners.",
                         no_args_is_help=True)

RecipeOpt = Annotated[
    Optional[Path],
    typer.Option("--recipe", "-r", help="TOML recipe file (else $TAISU_RECIPE; TAISU_* variables override it)."),
]


def format_holdings(holdings: Sequence["LeaseHolding"]) -> str:
    """A table of leases: state, shard, samples, until, whether the owner is provably dead, and the owner."""
    if not holdings:
        return "no samples are leased"
    lines = [f"{'state':<14}{'shard':>6}{'samples':>10}  {'until (UTC)':<31}{'owner':<9}held by  [owner token]"]
    for h in holdings:
        row = h.as_dict()
        until = row["until"] + (" (expired)" if h.expired else "")
        lines.append(f"{h.state:<14}{h.shard:>6}{h.samples:>10,}  {until:<31}{row['liveness']:<9}{row['holder']}  [{h.owner}]")
    return "\n".join(lines)


def _open(recipe: Path | None):  # type: ignore[no-untyped-def]
    from taisu_etl.config import load_settings
    from taisu_etl.services import open_ledger

    return open_ledger(load_settings(recipe))


@leases_app.command("list")
def leases_list(
    recipe: RecipeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the leases held: owner, state, shard, samples, until when, and whether the owner is provably dead.

    The owner is "alive" or "dead" when it ran on this machine, "unknown" elsewhere (its lease
    runs out unless its heartbeat renews it).
    """
    from taisu_etl.db.leases import lease_holders

    holdings = lease_holders(_open(recipe))
    if as_json:
        typer.echo(json.dumps([h.as_dict() for h in holdings], ensure_ascii=False))
    else:
        typer.echo(format_holdings(holdings))


@leases_app.command("release")
def leases_release(
    recipe: RecipeOpt = None,
    dead: Annotated[bool, typer.Option("--dead", help="free the leases of provably dead owners and expired leases")] = False,
    owner: Annotated[Optional[str], typer.Option("--owner", help="free every lease of this owner token (as `leases list` shows "
                                                 "it in brackets), alive or not: for a machine you know is gone")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only print what would be freed")] = False,
) -> None:
    """Free leases so that the next stage run takes those samples at once; prints what was freed."""
    from taisu_etl.db.leases import release_dead_leases, release_owner

    if dead == (owner is not None):
        raise ConfigError("say which leases to free: `taisu-etl leases release --dead` or `--owner TOKEN`")
    ledger = _open(recipe)
    freed = release_dead_leases(ledger, dry_run=dry_run) if dead else release_owner(ledger, owner or "", dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    if not freed:
        typer.echo(f"nothing to free: no {'dead or expired' if dead else 'such'} leases")
        return
    for h in freed:
        why = "released by request" if not dead else ("owner is dead" if h.dead else "lease expired")
        typer.echo(f"{verb} {h.describe()} ({why})")
    typer.echo(f"{verb} {sum(h.samples for h in freed):,} samples in all")
