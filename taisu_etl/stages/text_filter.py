"""Text filter stage: `ingested` samples become `text_ok` or `text_rejected`, one event each.

Runs before any download, so rejected pairs cost no bandwidth. Samples that arrived with their
image already stored (TaiSu's archives) go straight to `fetched`: they skip the fetch stage.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.db.overlap import BackgroundWriter
from taisu_etl.text import TextDecision, TextFilter, TextFilterConfig
from taisu_etl.vocab import Stage, State

_COLUMNS = ("id", "caption", "caption_hash", "object_key")


@dataclass
class TextFilterReport:
    shard: int | None
    seen: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.reasons.get("ok", 0)

    def summary(self) -> str:
        rejected = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common() if r != "ok")
        where = f"shard {self.shard}" if self.shard is not None else "all shards"
        return f"text filter, {where}: {self.seen:,} captions, {self.kept:,} kept; rejected: {rejected or 'none'} ({self.seconds:.1f} s)"

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "seen": self.seen, "reasons": dict(self.reasons), "seconds": round(self.seconds, 3)}


def pii_scrubber(config: TextFilterConfig) -> TextFilter:
    """A filter that only cleans and masks personal data, for captions another rule rejected first."""
    return TextFilter(config.model_copy(update={"order": ("cleanup", "pii"), "disabled": (), "pii_action": "mask"}))


def _outcome(row: dict[str, Any], decision: TextDecision, scrubber: TextFilter) -> Outcome:
    updates: dict[str, Any] = {}
    if decision.keep and decision.text != row["caption"]:
        updates["caption_clean"] = decision.text  # only when it differs: most captions need no rewrite
    if "pii" in decision.detail or decision.reason == "pii":
        # Personal data found: the ledger keeps only the masked text, whatever the decision.
        updates["caption"] = decision.text
    elif not decision.keep:
        # Rejected before the PII rule ran (e.g. as advertising): still keep no phone numbers.
        scrubbed = scrubber.check(row["caption"])
        if "pii" in scrubbed.detail:
            updates["caption"] = scrubbed.text
    if not decision.keep:
        assert decision.reason is not None
        return Outcome(row["id"], State.TEXT_REJECTED, decision.reason, {"rule": decision.rule, **decision.detail}, updates)
    to_state = State.FETCHED if row["object_key"] else State.TEXT_OK
    return Outcome(row["id"], to_state, "ok", decision.detail or None, updates)


def filter_shard(
    ledger: Ledger, text_filter: TextFilter, *, shard: int | None = None, ctx: RunContext | None = None, batch_size: int = 5000,
) -> TextFilterReport:
    """Run the text filter over every `ingested` sample of `shard` (all shards, one by one, when None)."""
    if shard is None:
        total = TextFilterReport(shard=None)
        for one in ledger.shards_with(State.INGESTED):
            part = filter_shard(ledger, text_filter, shard=one, ctx=ctx, batch_size=batch_size)
            total.seen += part.seen
            total.reasons.update(part.reasons)
            total.seconds += part.seconds
        return total
    report = TextFilterReport(shard=shard)
    started = time.perf_counter()
    counts_frequency = "over_frequent" in text_filter.rule_names
    scrubber = pii_scrubber(text_filter.config)
    after = 0
    # Decisions of batch k are written while batch k+1 is read and checked.
    with BackgroundWriter(on_result=report.reasons.update) as writer:
        while rows := ledger.scan(state=State.INGESTED, shard=shard, after_id=after, limit=batch_size, columns=_COLUMNS):
            after = rows[-1]["id"]
            freq = ledger.caption_frequencies(r["caption_hash"] for r in rows) if counts_frequency else {}
            outcomes = [_outcome(r, text_filter.check(r["caption"], frequency=freq.get(r["caption_hash"])), scrubber) for r in rows]
            writer.submit(ledger.apply, outcomes, from_state=State.INGESTED, stage=Stage.TEXT, ctx=ctx)
            report.seen += len(rows)
    report.seconds = time.perf_counter() - started
    return report
