"""Score stage throughput against the bare model forward, same model and batch size, one run.

    python bench/score.py --images 2000 --model tiny
    python bench/score.py --images 1000 --model ViT-B-32      # random weights, real compute
    python bench/score.py --images 200 --model taisu-lit-rn101  # TaiSu's LiT layout, random weights

The stage's images/s covers everything it does per sample: object-store read, JPEG decode,
preprocessing (in worker processes), both towers of the model, the TaiSu rule, embeddings to
the store and the ledger write. The peer runs only the two towers on tensors prepared
beforehand (image tensors and the captions' text), batch after batch. The ratio says how close
the stage keeps the model to busy: 1.0 means the model never waits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


TAISU_LIT_TOWERS = {"taisu-lit-rn101": "RN101", "taisu-lit-vit-b-32": "ViT-B-32"}


def _scorer(model: str, tmp: Path, device: str, captions: list[str]):
    from taisu_etl.models import ClipScorer, ModelSpec
    from taisu_etl.stages.model_config import ScoreConfig

    if model == "tiny":
        return ClipScorer.load(ScoreConfig().model.spec(), device=device)
    if model in TAISU_LIT_TOWERS:
        # TaiSu's released pair in its own file layout (OpenAI-CLIP image tower, 50,002-id text
        # tower, SentencePiece model trained on these captions), random weights.
        from taisu_etl.models.taisu_lit import write_random_checkpoints

        spec = write_random_checkpoints(tmp / "taisu-lit", captions, visual=TAISU_LIT_TOWERS[model])
        return ClipScorer.load(spec, device=device)
    # A real architecture with random weights: no weights can be downloaded here, and throughput
    # does not depend on what the weights are.
    import open_clip
    import torch

    net = open_clip.create_model(model, pretrained=None)
    path = tmp / f"{model}-random.pt"
    torch.save(net.state_dict(), path)
    return ClipScorer.load(ModelSpec(arch=model, checkpoint=str(path), tokenizer="open_clip"), device=device)


def _bare_forward(scorer, store, rows, batch_size: int) -> float:
    """Images/s of the two towers alone on pre-made tensors (prepared before the clock starts)."""
    import io

    import torch
    from PIL import Image

    from taisu_etl.stages.score import caption_of

    tensors = []
    for row in rows:
        with Image.open(io.BytesIO(store.get(row["object_key"]))) as im:
            tensors.append(scorer.preprocess(im.convert("RGB")))
    pixels = torch.stack(tensors)
    texts = [caption_of(r) for r in rows]
    scorer.encode_images(pixels[:batch_size])
    scorer.encode_texts(texts[:batch_size])  # warm-up, as the stage's first batch is
    started = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        scorer.encode_images(pixels[i:i + batch_size])
        scorer.encode_texts(texts[i:i + batch_size])
    return len(rows) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="tiny", help="tiny (the project's tiny CLIP), taisu-lit-rn101 / taisu-lit-vit-b-32 (TaiSu's LiT layout), or an open_clip architecture name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decode/preprocess processes of the stage")
    parser.add_argument("--size", type=int, default=256, help="side of the stored JPEGs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--db", default=None, help="ledger URL (default: a temporary SQLite file)")
    args = parser.parse_args(argv)

    import torch

    from taisu_etl.db.ledger import Ledger
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.stages.model_config import ScoreConfig
    from taisu_etl.stages.score import score_shard
    from taisu_etl.storage import LocalObjectStore
    from taisu_etl.synthweb import make_pairs
    from taisu_etl.synthweb.seeding import seed_checked_pairs
    from taisu_etl.vocab import State

    with tempfile.TemporaryDirectory(prefix="taisu-bench-score-") as tmpdir:
        tmp = Path(tmpdir)
        url = args.db or f"sqlite:///{tmp / 'ledger.db'}"
        ledger = Ledger.open(url, shards=1, require_schema=False)
        upgrade(ledger.engine)
        store = LocalObjectStore(tmp / "objects")
        t0 = time.perf_counter()
        pairs = make_pairs(args.images, seed=7, split="heldout")
        seed_checked_pairs(ledger, store, pairs, size=(args.size, args.size), workers=2)
        print(f"setup: {args.images:,} stored {args.size}px images in the ledger ({time.perf_counter() - t0:.1f} s)")
        scorer = _scorer(args.model, tmp, args.device, [p.caption for p in pairs])
        print(f"model: {scorer.model_id} on {scorer.device}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
        rows = ledger.scan(state=State.IMAGE_OK, columns=("id", "object_key", "caption", "caption_clean"), limit=args.images)

        bare = _bare_forward(scorer, store, rows, args.batch_size)
        print(f"bare model forward (both towers, pre-made tensors): {bare:,.1f} images/s")

        config = ScoreConfig(batch_size=args.batch_size, workers=args.workers, chunk_size=max(args.images, 1))
        t0 = time.perf_counter()
        report = score_shard(ledger, store, config, scorer=scorer, progress=lambda _: None)
        stage = report.seen / (time.perf_counter() - t0)
        print(f"score stage (read, decode, preprocess, model, rule, embeddings, ledger): {stage:,.1f} images/s "
              f"({report.seen:,} pairs, {report.kept:,} accepted; model busy {report.model_seconds / report.seconds:.0%} of the stage)")
        print(f"ratio stage / bare forward: {stage / bare:.2f}  (target >= 0.9)")
        print(f"reproduce: python bench/score.py --images {args.images} --model {args.model} --batch-size {args.batch_size} "
              f"--workers {args.workers}")
        ledger.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
