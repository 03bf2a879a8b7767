"""Score stage on the project's tiny CLIP: real images from the store, real decisions in the ledger."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from taisu_etl.db.ledger import Ledger
from taisu_etl.stages.model_config import ScoreConfig
from taisu_etl.stages.score import score_shard
from taisu_etl.storage import LocalObjectStore
from taisu_etl.synthweb import make_pairs
from taisu_etl.synthweb.seeding import seed_checked_pairs
from taisu_etl.vocab import State


@pytest.fixture(scope="module")
def scorer():
    from taisu_etl.models import ClipScorer

    return ClipScorer.load(ScoreConfig().model.spec(), device="cpu")


def _states(ledger: Ledger, ids: list[int]) -> dict[int, tuple[str, str]]:
    out = {}
    for sid in ids:
        ev = ledger.events(sid)[-1]
        out[sid] = (ev["to_state"], ev["reason"])
    return out


def test_taisu_rule_keeps_matched_and_drops_mismatched_pairs(ledger: Ledger, tmp_path: Path, scorer) -> None:
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(80, seed=11, mismatch_rate=0.25, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(128, 128))
    report = score_shard(ledger, store, ScoreConfig(workers=0, batch_size=32), scorer=scorer)
    assert report.seen == 80
    states = _states(ledger, list(ids.values()))
    matched = [ids[p.id] for p in pairs if p.matched]
    mismatched = [ids[p.id] for p in pairs if not p.matched]
    kept_matched = sum(states[i][0] == State.ACCEPTED for i in matched) / len(matched)
    dropped_mismatched = sum(states[i] == (State.SCORE_REJECTED, "retrieval_miss") for i in mismatched) / len(mismatched)
    print(f"\nscore stage, TaiSu rule: kept {kept_matched:.0%} of matched, dropped {dropped_mismatched:.0%} of mismatched")
    assert kept_matched >= 0.9 and dropped_mismatched >= 0.9
    ev = ledger.events(matched[0])[-1]
    assert ev["stage"] == "score" and ev["details"]["rule"] == "taisu" and ev["details"]["model"] == scorer.model_id
    assert {"group", "image_rank", "text_rank", "seed", "group_size", "mode", "score"} <= set(ev["details"])
    row = ledger.scan(state=State(ev["to_state"]), columns=("id", "score", "score_model"), limit=1000)
    assert all(r["score_model"] == scorer.model_id and -1.0 <= r["score"] <= 1.0 for r in row)
    # Embeddings are kept per shard, with the sample ids they belong to.
    keys = [o.key for o in store.list("embeddings/")]
    assert keys and all(k.endswith(".npz") for k in keys)
    seen_ids = set()
    for key in keys:
        with np.load(io.BytesIO(store.get(key))) as npz:
            assert npz["image"].shape == npz["text"].shape and npz["image"].shape[0] == len(npz["ids"])
            seen_ids.update(int(i) for i in npz["ids"])
    assert seen_ids == set(ids.values())
    # A second run finds nothing left to score.
    assert score_shard(ledger, store, ScoreConfig(workers=0), scorer=scorer).seen == 0


def test_quantile_and_threshold_rules(ledger: Ledger, tmp_path: Path, scorer) -> None:
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(40, seed=12, mismatch_rate=0.0, split="heldout")
    seed_checked_pairs(ledger, store, pairs, size=(96, 96))
    report = score_shard(ledger, store, ScoreConfig(workers=0, rule="quantile", quantile=0.25, chunk_size=1000,
                                                    store_embeddings=False), scorer=scorer)
    # The lowest quarter of each shard's chunk goes (one more or less where the quantile falls
    # between equal scores); each event records its chunk's cutoff.
    assert 8 <= report.reasons["low_score"] <= 12 and report.reasons["low_score"] + report.reasons["ok"] == 40
    by_cutoff: dict[float, dict[str, list[float]]] = {}
    for state in (State.SCORE_REJECTED, State.ACCEPTED):
        for row in ledger.scan(state=state, columns=("id", "score"), limit=100):
            cutoff = ledger.events(row["id"])[-1]["details"]["cutoff"]
            by_cutoff.setdefault(cutoff, {}).setdefault(state.value, []).append(row["score"])
    assert 1 <= len(by_cutoff) <= 4  # one chunk per shard
    for cutoff, scores in by_cutoff.items():
        assert all(x < cutoff + 1e-6 for x in scores.get("score_rejected", []))
        assert all(x >= cutoff - 1e-6 for x in scores.get("accepted", []))


def test_threshold_rule_and_unreadable_image(ledger: Ledger, tmp_path: Path, scorer) -> None:
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(6, seed=13, mismatch_rate=0.0, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(96, 96))
    broken = ids[pairs[0].id]
    key = ledger.scan(state=State.IMAGE_OK, columns=("id", "object_key"), limit=10)[0]["object_key"]
    (tmp_path / "o" / key).write_bytes(b"not a jpeg any more")
    report = score_shard(ledger, store, ScoreConfig(workers=0, rule="threshold", threshold=1.0, store_embeddings=False), scorer=scorer)
    assert report.reasons == {"unreadable_image": 1, "low_score": 5}
    assert ledger.events(broken)[-1]["reason"] == "unreadable_image"


def test_worker_processes_give_the_same_scores(ledger: Ledger, tmp_path: Path, scorer) -> None:
    """Decoding in spawned workers must not change a single decision or score."""
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(24, seed=14, mismatch_rate=0.25, split="heldout")
    seed_checked_pairs(ledger, store, pairs, size=(96, 96))
    inline = score_shard(ledger, store, ScoreConfig(workers=0, batch_size=8, store_embeddings=True), scorer=scorer)
    inline_scores = {k: np.load(io.BytesIO(store.get(k)))["image"] for k in (o.key for o in store.list("embeddings/"))}
    assert inline.seen == 24
    # Same images again, scored through two worker processes, into a fresh ledger view.
    store2 = LocalObjectStore(tmp_path / "o2")
    from taisu_etl.db.ledger import Ledger as L

    other = L.open(f"sqlite:///{tmp_path / 'other.db'}", shards=4, require_schema=False)
    from taisu_etl.db.migrate import upgrade

    upgrade(other.engine)
    seed_checked_pairs(other, store2, pairs, size=(96, 96))
    pooled = score_shard(other, store2, ScoreConfig(workers=2, batch_size=8, store_embeddings=True), scorer=scorer)
    assert pooled.reasons == inline.reasons
    pooled_scores = {k: np.load(io.BytesIO(store2.get(k)))["image"] for k in (o.key for o in store2.list("embeddings/"))}
    assert sorted(pooled_scores) == sorted(inline_scores)
    for key in inline_scores:
        np.testing.assert_allclose(pooled_scores[key].astype(np.float32), inline_scores[key].astype(np.float32), atol=2e-3)
    other.dispose()
