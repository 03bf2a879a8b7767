"""Human-readable summaries of the ledger (the funnel printed by `status` and the demo)."""

from __future__ import annotations

from taisu_etl.vocab import State

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
