"""Recheck: re-validate the URLs of stored samples at a chosen rate, without touching their images.

Each checked sample gets one `recheck` event and keeps its state (releases never depend on live
URLs: the bytes are in the object store):
- `url_alive`    the URL serves the same image (same sha256 after normalisation);
- `http_404`, `http_410`, `dns`, ... the URL is gone or failing (`details.expired` says which);
- `url_changed`  the URL serves a different image: it becomes a new candidate sample (source
                 `recheck`) that goes through every filter, and the stored image stays as it was.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.context import RunContext
from taisu_etl.db.host_budget import LedgerHostBudget
from taisu_etl.db.ledger import Ledger, NewSample, Outcome
from taisu_etl.db.schema import sample, sample_event, sample_state
from taisu_etl.fetch import Fetcher
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import DecodePool, ImageConfig, ImageRejection
from taisu_etl.vocab import Stage, State

# Samples whose image is stored and kept: the ones whose URL is worth re-validating.
RECHECKED_STATES = (State.IMAGE_OK, State.ACCEPTED, State.CAPTIONED, State.SCORE_REJECTED, State.DUPLICATE, State.FETCHED)


@dataclass
class RecheckReport:
    checked: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    new_candidates: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common())
        return f"recheck: {self.checked:,} URLs in {self.seconds:.1f} s: {parts or 'nothing to check'}; {self.new_candidates} new candidates"

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "reasons": dict(self.reasons), "new_candidates": self.new_candidates, "seconds": round(self.seconds, 3)}


def _due(ledger: Ledger, limit: int) -> list[dict[str, Any]]:
    """Stored samples with a URL, least recently rechecked first (never-rechecked before all)."""
    last = (
        sa.select(sample_event.c.sample_id, sa.func.max(sample_event.c.id).label("last"))
        .where(sample_event.c.stage == Stage.RECHECK.value)
        .group_by(sample_event.c.sample_id)
        .subquery()
    )
    query = (
        sa.select(sample.c.id, sample.c.url, sample.c.caption, sample.c.sha256, sample_state.c.state)
        .join(sample_state, sample_state.c.sample_id == sample.c.id)
        .outerjoin(last, last.c.sample_id == sample.c.id)
        .where(sample.c.url.is_not(None), sample.c.sha256.is_not(None), sample_state.c.state.in_([s.value for s in RECHECKED_STATES]))
        .order_by(sa.func.coalesce(last.c.last, 0), sample.c.id)
        .limit(limit)
    )
    with ledger.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


async def _check_all(ledger: Ledger, rows: list[dict[str, Any]], settings: FetchSettings, image: ImageConfig, rate: float,
                     ) -> list[tuple[dict[str, Any], Any]]:
    results: list[tuple[dict[str, Any], Any]] = []
    interval = 1.0 / rate if rate > 0 else 0.0
    # Decoded in the same isolated worker processes as the fetch stage: the bytes are untrusted.
    with DecodePool(image, timeout_s=image.decode_timeout_s) as pool:
        # The recheck's requests count against the same per-host budget as every fetch worker's.
        budget = LedgerHostBudget(ledger) if settings.shared_host_limits else None
        async with Fetcher(settings.policy(), budget=budget) as fetcher:
            async def one(row: dict[str, Any], delay: float) -> None:
                await asyncio.sleep(delay)  # spreads the checks at `rate` per second overall
                res = await fetcher.fetch(row["url"])
                decoded = await pool.decode(res.body) if res.ok and res.body is not None else None
                results.append((row, (res, decoded)))

            await asyncio.gather(*(one(row, i * interval) for i, row in enumerate(rows)))
    return results


def recheck(
    ledger: Ledger, settings: FetchSettings, image: ImageConfig, *, limit: int = 1000, rate: float = 10.0,
    ctx: RunContext | None = None,
) -> RecheckReport:
    """Re-validate up to `limit` stored samples' URLs at `rate` requests per second."""
    report = RecheckReport()
    started = time.perf_counter()
    rows = _due(ledger, limit)
    checked = asyncio.run(_check_all(ledger, rows, settings, image, rate)) if rows else []
    by_state: dict[State, list[Outcome]] = {}
    candidates: list[NewSample] = []
    for row, (res, decoded) in checked:
        if not res.ok:
            outcome = Outcome(row["id"], State(row["state"]), res.reason, {**res.details(), "expired": res.expired})
        elif isinstance(decoded, ImageRejection) or decoded is None:
            reason = decoded.reason if decoded is not None else "not_image"
            outcome = Outcome(row["id"], State(row["state"]), reason, {**res.details(), "expired": False})
        elif decoded.sha256 == row["sha256"]:
            outcome = Outcome(row["id"], State(row["state"]), "url_alive", {"status": res.status})
        else:
            outcome = Outcome(row["id"], State(row["state"]), "url_changed", {"status": res.status, "new_sha256": decoded.sha256})
            candidates.append(NewSample(caption=row["caption"], source="recheck", url=row["url"], source_pos=f"sample {row['id']}",
                                        identity=f"{row['url']}#recheck:{decoded.sha256}"))
        by_state.setdefault(State(row["state"]), []).append(outcome)
    for state, outcomes in by_state.items():
        report.reasons.update(ledger.apply(outcomes, from_state=state, stage=Stage.RECHECK, ctx=ctx))
    if candidates:
        report.new_candidates = ledger.add_samples(candidates, ctx=ctx).inserted
    report.checked = len(checked)
    report.seconds = time.perf_counter() - started
    return report
