"""Caption stage: `accepted` samples get a generated caption (TaiSu's `g`) and become `captioned`.

For each image the captioning model (CoCa) writes `num_captions` candidates. A candidate must pass
the same text filter as web captions, and then a retrieval check with the *scoring* model: among
a group of the chunk's images (`check_group`, shuffled with the recorded seed) the candidate must
rank its own image first, i.e. it describes this image better than any other in the group. The
best-scoring survivor becomes `gen_caption`, with the model id and decoding settings in the event.
When no candidate survives, the sample is still `captioned` (the stage ran) with reason
`caption_rejected`, no `g`, and the candidates and why each failed in the event.

A sample that arrived with a generated caption (TaiSu's released `g`) keeps it: it is moved to
`captioned` with the existing caption's model in the event, and nothing is generated for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from taisu_etl.db.context import RunContext
from taisu_etl.db.leases import LeaseConflict, StageLease
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.stages.image_batches import ImageBatches
from taisu_etl.stages.model_config import CaptionConfig, ScoreConfig
from taisu_etl.storage import ObjectStore
from taisu_etl.text import TextFilter
from taisu_etl.vocab import Stage, State

if TYPE_CHECKING:
    from taisu_etl.models import CaptionGenerator, ClipScorer

log = logging.getLogger(__name__)

_COLUMNS = ("id", "object_key", "gen_caption", "gen_caption_model")
_CHUNK = 1000


@dataclass
class CaptionReport:
    shard: int | None
    model_id: str = ""
    seen: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    candidates: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        where = f"shard {self.shard}" if self.shard is not None else "all shards"
        ok = self.reasons.get("ok", 0)
        why = ", ".join(f"{r} {n:,}" for r, n in self.candidates.most_common() if r != "ok")
        return (f"captions ({self.model_id}), {where}: {self.seen:,} images, {ok:,} captioned; "
                f"candidates dropped: {why or 'none'} ({self.seconds:.1f} s)")

    def merge(self, other: "CaptionReport") -> None:
        self.model_id = other.model_id or self.model_id
        self.seen += other.seen
        self.reasons.update(other.reasons)
        self.candidates.update(other.candidates)
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "model": self.model_id, "seen": self.seen, "reasons": dict(self.reasons),
                "candidates": dict(self.candidates), "seconds": round(self.seconds, 3)}


def decoding_settings(config: CaptionConfig) -> dict[str, Any]:
    """The generation parameters recorded with every generated caption."""
    base: dict[str, Any] = {"method": config.method, "num_captions": config.num_captions, "max_len": config.max_len, "seed": config.seed}
    if config.method == "beam":
        base["beam_width"] = config.beam_width
    else:
        base.update(top_p=config.top_p, temperature=config.temperature)
    return base


def caption_shard(
    ledger: Ledger, store: ObjectStore, config: CaptionConfig, score_config: ScoreConfig, text_filter: TextFilter, *,
    shard: int | None = None, ctx: RunContext | None = None, generator: "CaptionGenerator | None" = None,
    scorer: "ClipScorer | None" = None, lease_seconds: int = 120, claim_wait_seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> CaptionReport:
    """Caption every `accepted` sample of `shard` (every shard, one by one, when None).

    Samples another process holds are waited for (up to `claim_wait_seconds`, default
    lease_seconds + 30) or taken from an owner that is provably dead; see `StageLease`.
    """
    from taisu_etl.models import CaptionGenerator, ClipScorer

    generator = generator or CaptionGenerator.load(config.model.spec(), device=config.device, store=store)
    scorer = scorer or ClipScorer.load(score_config.model.spec(), device=config.device, store=store)
    if shard is None:
        total = CaptionReport(shard=None, model_id=generator.model_id)
        held: list[LeaseConflict] = []  # a shard someone else holds must not keep the others from being done
        for one in ledger.shards_with(State.ACCEPTED):
            try:
                total.merge(caption_shard(ledger, store, config, score_config, text_filter, shard=one, ctx=ctx,
                                          generator=generator, scorer=scorer, lease_seconds=lease_seconds,
                                          claim_wait_seconds=claim_wait_seconds, progress=progress))
            except LeaseConflict as conflict:
                held.append(conflict)
        if held:
            raise LeaseConflict.combine(held)
        return total
    report = CaptionReport(shard=shard, model_id=generator.model_id)
    started = time.perf_counter()
    say = progress or log.info
    with StageLease(ledger, stage=Stage.CAPTION, shard=shard, lease_seconds=lease_seconds, claim_wait_seconds=claim_wait_seconds) as lease, \
            ImageBatches(store, [generator.preprocess, scorer.preprocess], batch_size=config.batch_size,
                         workers=config.workers, draft=max(generator.image_size, scorer.image_size)) as batches:
        while rows := lease.claim(State.ACCEPTED, limit=_CHUNK, columns=_COLUMNS):
            outcomes = _caption_chunk(config, generator, scorer, text_filter, batches, rows, report)
            report.reasons.update(lease.apply(outcomes, from_state=State.ACCEPTED, ctx=ctx))
            report.seen += len(rows)
            say(f"caption shard {shard}: {report.seen:,} images, {report.reasons.get('ok', 0):,} captioned")
    report.seconds = time.perf_counter() - started
    return report


def _groups(n: int, size: int, seed: int) -> np.ndarray:
    """Group index of each of n rows: a seeded shuffle cut into groups of `size`."""
    order = np.random.default_rng(seed).permutation(n)
    group = np.empty(n, dtype=np.int64)
    group[order] = np.arange(n) // size
    return group


def _caption_chunk(
    config: CaptionConfig, generator: "CaptionGenerator", scorer: "ClipScorer", text_filter: TextFilter,
    batches: ImageBatches, rows: list[dict[str, Any]], report: CaptionReport,
) -> list[Outcome]:
    import torch

    outcomes = [
        Outcome(r["id"], State.CAPTIONED, "ok", {"kept_existing": True, "model": r["gen_caption_model"]})
        for r in rows if r["gen_caption"]
    ]
    rows = [r for r in rows if not r["gen_caption"]]
    done: list[dict[str, Any]] = []
    candidates: list[list[str]] = []
    image_parts: list[np.ndarray] = []
    for batch in batches(rows):
        for row, why in batch.failed:
            outcomes.append(Outcome(row["id"], State.CAPTIONED, "caption_rejected", {"error": why}))
        if not batch.rows:
            continue
        candidates.extend(generator.generate(
            torch.from_numpy(batch.pixels[0]), num_captions=config.num_captions, method=config.method,
            beam_width=config.beam_width, top_p=config.top_p, temperature=config.temperature,
            max_len=config.max_len, seed=config.seed,
        ))
        image_parts.append(scorer.encode_images(torch.from_numpy(batch.pixels[1])).numpy())
        done.extend(batch.rows)
    if not done:
        return outcomes
    image_emb = np.concatenate(image_parts)
    group = _groups(len(done), config.check_group, config.seed)
    # Text filter first: only candidates that pass it are worth a forward of the scoring model.
    checked: list[list[tuple[str, str | None]]] = []  # per row: (text, rejection reason or None)
    flat: list[tuple[int, int, str]] = []  # (row index, candidate index, cleaned text)
    for i, cands in enumerate(candidates):
        row_checks: list[tuple[str, str | None]] = []
        for text in dict.fromkeys(cands):  # identical candidates are one candidate
            decision = text_filter.check(text)
            if decision.keep:
                flat.append((i, len(row_checks), decision.text))
                row_checks.append((decision.text, None))
            else:
                row_checks.append((text, decision.reason))
        checked.append(row_checks)
    best: dict[int, tuple[float, str]] = {}
    if flat:
        text_emb = scorer.encode_texts([t for _, _, t in flat]).numpy()
        members = {g: np.flatnonzero(group == g) for g in np.unique(group)}  # once per group, not per candidate
        for (i, j, text), emb in zip(flat, text_emb):
            sims = image_emb[members[group[i]]] @ emb
            own = float(image_emb[i] @ emb)
            if config.check_group > 1 and np.any(sims > own + 1e-6):
                checked[i][j] = (text, "retrieval_miss")
            elif own < config.min_score:
                checked[i][j] = (text, "low_score")
            elif i not in best or own > best[i][0]:
                best[i] = (own, text)
    decoding = decoding_settings(config)
    for i, row in enumerate(done):
        report.candidates.update((why or "ok") for _, why in checked[i])
        tried = [{"text": t, "why": why or "ok"} for t, why in checked[i]]
        if i in best:
            score, text = best[i]
            details = {"model": generator.model_id, "decoding": decoding, "scorer": scorer.model_id,
                       "score": round(score, 6), "check_group": config.check_group, "candidates": tried}
            outcomes.append(Outcome(row["id"], State.CAPTIONED, "ok", details,
                                    {"gen_caption": text, "gen_caption_model": generator.model_id}))
        else:
            outcomes.append(Outcome(row["id"], State.CAPTIONED, "caption_rejected",
                                    {"model": generator.model_id, "decoding": decoding, "scorer": scorer.model_id, "candidates": tried}))
    return outcomes
