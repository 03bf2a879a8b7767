"""Caption stage on the project's tiny CoCa and CLIP: generated, filtered, retrieval-checked captions."""

from __future__ import annotations

from pathlib import Path

import pytest

from taisu_etl.db.ledger import Ledger
from taisu_etl.stages.caption import caption_shard
from taisu_etl.stages.model_config import CaptionConfig, ScoreConfig
from taisu_etl.storage import LocalObjectStore
from taisu_etl.synthweb import make_pairs, parse_caption
from taisu_etl.synthweb.seeding import seed_checked_pairs
from taisu_etl.text import TextFilter, TextFilterConfig
from taisu_etl.vocab import State


@pytest.fixture(scope="module")
def models():
    from taisu_etl.models import CaptionGenerator, ClipScorer

    return CaptionGenerator.load(CaptionConfig().model.spec(), device="cpu"), ClipScorer.load(ScoreConfig().model.spec(), device="cpu")


def test_generated_captions_describe_the_image_and_are_recorded(ledger: Ledger, tmp_path: Path, models) -> None:
    generator, scorer = models
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(24, seed=21, mismatch_rate=0.0, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(128, 128), state=State.ACCEPTED)
    config = CaptionConfig(workers=0, batch_size=8, num_captions=2)
    report = caption_shard(ledger, store, config, ScoreConfig(), TextFilter(TextFilterConfig()), generator=generator, scorer=scorer)
    assert report.seen == 24
    rows = {r["id"]: r for r in ledger.scan(state=State.CAPTIONED, columns=("id", "gen_caption", "gen_caption_model"), limit=100)}
    assert set(rows) == set(ids.values())
    right = 0
    for pair in pairs:
        row = rows[ids[pair.id]]
        if row["gen_caption"] is None:
            continue
        assert row["gen_caption_model"] == generator.model_id
        facts = parse_caption(row["gen_caption"])
        right += facts.colour == pair.scene.colour and facts.shape == pair.scene.shape
    share = right / len(pairs)
    print(f"\ncaption stage: {share:.0%} of images got a kept caption naming their colour and shape")
    assert share >= 0.75
    kept = next(i for i in ids.values() if rows[i]["gen_caption"])
    ev = ledger.events(kept)[-1]
    assert ev["stage"] == "caption" and ev["reason"] == "ok"
    details = ev["details"]
    assert details["model"] == generator.model_id and details["scorer"] == scorer.model_id
    assert details["decoding"]["method"] == "beam" and details["decoding"]["num_captions"] == 2
    assert any(c["text"] == rows[kept]["gen_caption"] for c in details["candidates"])
    assert caption_shard(ledger, store, config, ScoreConfig(), TextFilter(TextFilterConfig()), generator=generator, scorer=scorer).seen == 0


def test_every_candidate_rejected_by_the_text_filter(ledger: Ledger, tmp_path: Path, models) -> None:
    generator, scorer = models
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(4, seed=22, mismatch_rate=0.0, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(96, 96), state=State.ACCEPTED)
    strict = TextFilter(TextFilterConfig(min_chars=40, max_chars=50))
    report = caption_shard(ledger, store, CaptionConfig(workers=0), ScoreConfig(), strict, generator=generator, scorer=scorer)
    assert report.reasons == {"caption_rejected": 4}
    assert report.candidates["text_too_short"] >= 4
    ev = ledger.events(next(iter(ids.values())))[-1]
    assert ev["to_state"] == "captioned" and ev["reason"] == "caption_rejected"
    assert all(c["why"] == "text_too_short" for c in ev["details"]["candidates"])
    assert all(r["gen_caption"] is None for r in ledger.scan(state=State.CAPTIONED, columns=("id", "gen_caption"), limit=10))


def test_retrieval_check_can_refuse_a_caption(ledger: Ledger, tmp_path: Path, models) -> None:
    """With an impossible minimum score, the retrieval check refuses every candidate."""
    generator, scorer = models
    store = LocalObjectStore(tmp_path / "o")
    seed_checked_pairs(ledger, store, make_pairs(3, seed=23, split="heldout"), size=(96, 96), state=State.ACCEPTED)
    report = caption_shard(ledger, store, CaptionConfig(workers=0, min_score=1.0, check_group=1), ScoreConfig(),
                           TextFilter(TextFilterConfig()), generator=generator, scorer=scorer)
    assert report.reasons == {"caption_rejected": 3}
    assert set(report.candidates) == {"low_score"}


def test_an_existing_generated_caption_is_kept(ledger: Ledger, tmp_path: Path, models) -> None:
    """TaiSu's released `g` is provenance: the stage keeps it instead of writing its own."""
    from taisu_etl.vocab import Stage

    generator, scorer = models
    store = LocalObjectStore(tmp_path / "o")
    ids = seed_checked_pairs(ledger, store, make_pairs(2, seed=24, split="heldout"), size=(96, 96), state=State.ACCEPTED)
    first, second = sorted(ids.values())
    ledger.move([first], from_state=State.ACCEPTED, to_state=State.ACCEPTED, stage=Stage.ADMIN, reason="manual",
                updates={"gen_caption": ["草地上的一只猫"], "gen_caption_model": ["taisu-release"]})
    report = caption_shard(ledger, store, CaptionConfig(workers=0), ScoreConfig(), TextFilter(TextFilterConfig()),
                           generator=generator, scorer=scorer)
    assert report.seen == 2
    rows = {r["id"]: r for r in ledger.scan(state=State.CAPTIONED, columns=("id", "gen_caption", "gen_caption_model"), limit=10)}
    assert (rows[first]["gen_caption"], rows[first]["gen_caption_model"]) == ("草地上的一只猫", "taisu-release")
    assert ledger.events(first)[-1]["details"] == {"kept_existing": True, "model": "taisu-release"}
    assert rows[second]["gen_caption_model"] in (generator.model_id, None)
