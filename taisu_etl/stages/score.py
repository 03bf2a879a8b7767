"""Score stage: `image_ok` samples become `accepted` or `score_rejected` by image-text retrieval.

Every pair's cosine score is stored with the id of the model that produced it, so a threshold
chosen for one model is never applied to another's scores. Samples are decided a chunk at a time
(`chunk_size`, in id order, so a given ledger state always gives the same chunks): TaiSu's
rule shuffles the chunk into groups of `group_size` with a recorded seed and keeps a pair whose
image ranks its own caption first among the group's captions, or whose caption ranks its own
image first; the quantile rule drops the lowest-scoring share of the chunk. Each event records
the rule, its parameters and the pair's ranks, so "why was this pair dropped?" has an answer.

A blocklisted sample (URL, host, sha256, perceptual hash) is never accepted: it is refused
(`score_rejected`, reason `blocklisted`) before the model sees it, or, if the blocklist grew while
the model ran, just before the ledger write. After the write, the chunk's embeddings file loses
the vectors of every sample that is blocklisted or was taken down meanwhile, and the stored
images of those samples are deleted (`taisu_etl.takedown.guard`).
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from taisu_etl.db.context import RunContext
from taisu_etl.db.leases import LeaseConflict, StageLease
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.images.dedup import DEFAULT_DISTANCE
from taisu_etl.stages.image_batches import ImageBatches
from taisu_etl.stages.model_config import ScoreConfig
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown import guard
from taisu_etl.vocab import Stage, State

if TYPE_CHECKING:
    from taisu_etl.models import ClipScorer

log = logging.getLogger(__name__)

_COLUMNS = ("id", "object_key", "caption", "caption_clean", "url", "sha256", "phash")


@dataclass
class ScoreReport:
    shard: int | None
    model_id: str = ""
    seen: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.reasons.get("ok", 0)

    def summary(self) -> str:
        where = f"shard {self.shard}" if self.shard is not None else "all shards"
        why = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common() if r != "ok")
        rate = self.seen / self.seconds if self.seconds else 0.0
        return (f"score ({self.model_id}), {where}: {self.seen:,} pairs, {self.kept:,} accepted; "
                f"rejected: {why or 'none'} ({self.seconds:.1f} s, {rate:.0f} pairs/s)")

    def merge(self, other: "ScoreReport") -> None:
        self.model_id = other.model_id or self.model_id
        self.seen += other.seen
        self.reasons.update(other.reasons)
        self.seconds += other.seconds
        self.model_seconds += other.model_seconds

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "model": self.model_id, "seen": self.seen, "reasons": dict(self.reasons),
                "seconds": round(self.seconds, 3), "model_seconds": round(self.model_seconds, 3)}


def caption_of(row: dict[str, Any]) -> str:
    """The web caption a model sees: the text filter's cleaned form when there is one."""
    return row.get("caption_clean") or row["caption"]


def embeddings_key(model_id: str, shard: int | None, first_id: int, last_id: int) -> str:
    """Where one chunk's embeddings live: per model, per shard, named by the id range."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    where = f"shard-{shard:05d}" if shard is not None else "unsharded"
    return f"embeddings/{safe}/{where}/{first_id:012d}-{last_id:012d}.npz"


def decide(config: ScoreConfig, image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Apply the recipe's rule to one chunk: (scores, keep, per-pair details)."""
    from taisu_etl.models.retrieval import pair_scores, quantile_rule, taisu_rule, threshold_rule

    scores = pair_scores(image_emb, text_emb)
    if config.rule == "taisu":
        res = taisu_rule(image_emb, text_emb, group_size=config.group_size, seed=config.seed, mode=config.mode)
        base = {"rule": "taisu", "group_size": config.group_size, "mode": config.mode, "seed": config.seed}
        details = [{**base, "group": int(g), "image_rank": int(ir), "text_rank": int(tr)}
                   for g, ir, tr in zip(res.group, res.image_rank, res.text_rank)]
        return scores, res.keep, details
    if config.rule == "threshold":
        return scores, threshold_rule(scores, config.threshold), [{"rule": "threshold", "threshold": config.threshold}] * len(scores)
    keep, cutoff = quantile_rule(scores, config.quantile)
    return scores, keep, [{"rule": "quantile", "quantile": config.quantile, "cutoff": round(float(cutoff), 6)}] * len(scores)


def score_shard(
    ledger: Ledger, store: ObjectStore, config: ScoreConfig, *, shard: int | None = None, ctx: RunContext | None = None,
    scorer: "ClipScorer | None" = None, lease_seconds: int = 120, claim_wait_seconds: float | None = None,
    progress: Callable[[str], None] | None = None, phash_distance: int = DEFAULT_DISTANCE,
) -> ScoreReport:
    """Score and decide every `image_ok` sample of `shard` (every shard, one by one, when None).

    Samples another process holds are waited for (up to `claim_wait_seconds`, default
    lease_seconds + 30) or taken from an owner that is provably dead; see `StageLease`.
    `phash_distance`: the recipe's near-duplicate distance (image.phash_distance), which the
    blocklist's perceptual hashes are matched within.
    """
    if scorer is None:
        from taisu_etl.models import ClipScorer

        scorer = ClipScorer.load(config.model.spec(), device=config.device, store=store)
    if shard is None:
        total = ScoreReport(shard=None, model_id=scorer.model_id)
        held: list[LeaseConflict] = []  # a shard someone else holds must not keep the others from being done
        for one in ledger.shards_with(State.IMAGE_OK):
            try:
                total.merge(score_shard(ledger, store, config, shard=one, ctx=ctx, scorer=scorer, lease_seconds=lease_seconds,
                                        claim_wait_seconds=claim_wait_seconds, progress=progress, phash_distance=phash_distance))
            except LeaseConflict as conflict:
                held.append(conflict)
        if held:
            raise LeaseConflict.combine(held)
        return total
    report = ScoreReport(shard=shard, model_id=scorer.model_id)
    started = time.perf_counter()
    say = progress or log.info
    with StageLease(ledger, stage=Stage.SCORE, shard=shard, lease_seconds=lease_seconds, claim_wait_seconds=claim_wait_seconds) as lease, \
            ImageBatches(store, [scorer.preprocess], batch_size=config.batch_size, workers=config.workers,
                         prefetch=config.prefetch_batches, draft=scorer.image_size) as batches:
        while rows := lease.claim(State.IMAGE_OK, limit=config.chunk_size, columns=_COLUMNS):
            refused = guard.blocked_samples(ledger, rows, max_distance=phash_distance)
            outcomes = [_blocklisted(sid, why) for sid, why in refused.items()]
            scored, written = _score_chunk(store, config, scorer, batches, [r for r in rows if r["id"] not in refused], shard, report)
            # Once more just before the write: the blocklist may have grown while the model ran.
            late = guard.blocked_samples(ledger, [r for r in rows if r["id"] not in refused], max_distance=phash_distance)
            outcomes += [_blocklisted(o.sample_id, late[o.sample_id]) if o.sample_id in late else o for o in scored]
            report.reasons.update(lease.apply(outcomes, from_state=State.IMAGE_OK, ctx=ctx))
            # A takedown that landed after those checks: its samples are not moved (the move is
            # guarded by state), and what this chunk left of them goes now.
            guard.sweep_after_move(ledger, store, [r["id"] for r in rows], max_distance=phash_distance)
            if written is not None:
                guard.strip_embeddings(ledger, store, written[0], written[1], max_distance=phash_distance)
            report.seen += len(rows)
            say(f"score shard {shard}: {report.seen:,} pairs, {report.kept:,} accepted")
    report.seconds = time.perf_counter() - started
    return report


def _blocklisted(sample_id: int, why: str) -> Outcome:
    return Outcome(sample_id, State.SCORE_REJECTED, "blocklisted", {"by": why})


def _score_chunk(
    store: ObjectStore, config: ScoreConfig, scorer: "ClipScorer", batches: ImageBatches, rows: list[dict[str, Any]],
    shard: int | None, report: ScoreReport,
) -> tuple[list[Outcome], tuple[str, list[int]] | None]:
    """The chunk's decisions, and the embeddings file written (its key and the ids in it), if any."""
    import torch

    outcomes: list[Outcome] = []
    done: list[dict[str, Any]] = []
    image_parts: list[np.ndarray] = []
    text_parts: list[np.ndarray] = []
    for batch in batches(rows):
        for row, why in batch.failed:
            outcomes.append(Outcome(row["id"], State.SCORE_REJECTED, "unreadable_image", {"error": why, "object_key": row["object_key"]}))
        if not batch.rows:
            continue
        t0 = time.perf_counter()
        image_parts.append(scorer.encode_images(torch.from_numpy(batch.pixels[0])).numpy())
        text_parts.append(scorer.encode_texts([caption_of(r) for r in batch.rows]).numpy())
        report.model_seconds += time.perf_counter() - t0
        done.extend(batch.rows)
    if not done:
        return outcomes, None
    image_emb, text_emb = np.concatenate(image_parts), np.concatenate(text_parts)
    scores, keep, details = decide(config, image_emb, text_emb)
    reject_reason = "retrieval_miss" if config.rule == "taisu" else "low_score"
    first_id = done[0]["id"]
    for row, score, kept, detail in zip(done, scores, keep, details):
        det = {**detail, "model": scorer.model_id, "score": round(float(score), 6), "chunk": first_id}
        updates = {"score": float(score), "score_model": scorer.model_id}
        if kept:
            outcomes.append(Outcome(row["id"], State.ACCEPTED, "ok", det, updates))
        else:
            outcomes.append(Outcome(row["id"], State.SCORE_REJECTED, reject_reason, det, updates))
    if not config.store_embeddings:
        return outcomes, None
    ids = [r["id"] for r in done]
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids, dtype=np.int64), image=image_emb.astype(np.float16), text=text_emb.astype(np.float16))
    key = embeddings_key(scorer.model_id, shard, first_id, done[-1]["id"])
    store.put(key, buf.getvalue(), content_type="application/octet-stream")
    return outcomes, (key, ids)
