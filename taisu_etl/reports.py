"""Human-readable summaries of the ledger (the funnel printed by `status` and the demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taisu_etl.vocab import State

if TYPE_CHECKING:
    from taisu_etl.db.ledger import Ledger

_ORDER = [s.value for s in State]


def format_funnel(funnel: dict[str, int], reasons: list[tuple[str, str | None, int]]) -> str:
    """A table of samples per state in pipeline order, each with its reason codes and counts."""
    total = sum(funnel.values())
    if total == 0:
        return "no samples yet: run `taisu-etl ingest FILE` or the pipeline DAG"
    by_state: dict[str, list[tuple[str | None, int]]] = {}
    for state, reason, n in reasons:
        by_state.setdefault(state, []).append((reason, n))
    lines = [f"{'state':<16}{'samples':>10}{'share':>8}  reasons"]
    for state in sorted(funnel, key=lambda s: _ORDER.index(s) if s in _ORDER else len(_ORDER)):
        n = funnel[state]
        why = ", ".join(f"{r or '-'} {c:,}" for r, c in sorted(by_state.get(state, []), key=lambda t: -t[1]))
        lines.append(f"{state:<16}{n:>10,}{n / total:>8.1%}  {why}")
    lines.append(f"{'total':<16}{total:>10,}")
    return "\n".join(lines)


def incomplete_inputs(ledger: Ledger) -> list[tuple[str, str, str]]:
    """(source, where it broke off, why) for each input that broke off when last ingested (`truncated_input`).

    Ingesting the input again once it reads whole clears its entries (taisu_etl.stages.ingest).
    """
    import sqlalchemy as sa

    from taisu_etl.db.schema import ingest_issue

    c = ingest_issue.c
    rows = ledger.read(lambda conn: conn.execute(
        sa.select(c.source, c.position, c.detail).where(c.reason == "truncated_input").order_by(c.source, c.id)
    ).all())
    return [(source, position, detail or "") for source, position, detail in rows]


def format_incomplete(breaks: list[tuple[str, str, str]]) -> str:
    """The inputs that broke off, where, and what to do: for `taisu-etl status`."""
    lines = ["incomplete inputs: nothing after the break was read; ingest each again once repaired (only the missing rows are added):"]
    lines.extend(f"  {source} ({position}): {detail}" for source, position, detail in breaks)
    return "\n".join(lines)
