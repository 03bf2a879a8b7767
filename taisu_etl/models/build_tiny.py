"""Train the tiny CLIP and CoCa models committed in `taisu_etl/models/tiny/`.

No pretrained weights can be fetched on the build machines, and full-size models are far too slow
for tests, so the project trains its own: a character-level SentencePiece vocabulary and two
models of a few million parameters, on the synthetic web's "train" split (matched pairs only).
They learn colour, shape, background, size and position of the synthetic scenes well enough that
the retrieval filter and the captioner can be tested end to end on held-out scenes.

    python -m taisu_etl.models.build_tiny --out taisu_etl/models/tiny

Everything is seeded. On 2 shared CPU cores the measured build took 28 minutes for CLIP (12
epochs, ~40-75 s each) and CoCa's first stage (8 epochs, 65-200 s each, depending on what else ran),
plus ~2-2.5 minutes per epoch of CoCa's second stage; `--resume-coca` skips the first stage. Images go through
the same path as in the pipeline (256 px JPEG, decoded, the model's own preprocess), so the
models see at test time what they saw in training.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from taisu_etl.models import _torchvision_shim  # noqa: F401  (before torch/open_clip users)

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from taisu_etl.models.tokenizer import EOS_ID, PAD_ID, SentencePieceTokenizer, train_sentencepiece
from taisu_etl.synthweb import scenes as sw

TINY_DIR = Path(__file__).resolve().parent / "tiny"
TOKENIZER_FILE = "tiny-zh.model"
CLIP_NAME = "tiny-clip"
COCA_NAME = "tiny-coca"
CONTEXT_LENGTH = 24  # the longest synthweb caption is 21 characters, + BOS + EOS
IMAGE_SIZE = 64

# The images are what the synthetic web serves (256 px JPEG); the models see them resized.
SOURCE_SIZE = sw.DEFAULT_SIZE
SOURCE_QUALITY = sw.DEFAULT_QUALITY


def _text_cfg(vocab_size: int, width: int, layers: int, **extra: object) -> dict[str, object]:
    # pool_type "eos": the SentencePiece EOS (id 3) is not the largest id, so "argmax" would be wrong.
    return {
        "context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": width, "heads": width // 32,
        "layers": layers, "pad_id": PAD_ID, "eos_id": EOS_ID, "pool_type": "eos", **extra,
    }  # fmt: skip


def model_configs(vocab_size: int) -> dict[str, dict[str, object]]:
    """The open_clip JSON configs of the two tiny models.

    Sized for CPU training in minutes: the CLIP image tower is open_clip's ModifiedResNet (a
    convolutional net is ~4x cheaper than a ViT of the same quality at 64 px and sees small shapes
    well); CoCa's decoder needs image tokens, which only the ViT tower gives, so CoCa uses a
    narrow ViT with 8 px patches (a small shape, radius ~7 px, covers about 2x2 patches).
    """
    clip = {
        "embed_dim": 128,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
        "text_cfg": _text_cfg(vocab_size, width=128, layers=2),
    }
    coca = {
        # CoCa's decoder cross-attends to the pooled image tokens, which come out at embed_dim.
        "embed_dim": 96,
        "vision_cfg": {
            "image_size": IMAGE_SIZE, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32,
            "attentional_pool": True, "attn_pooler_queries": 32, "attn_pooler_heads": 4, "output_tokens": True,
        },  # fmt: skip
        "text_cfg": _text_cfg(vocab_size, width=96, layers=2, embed_cls=True, output_tokens=True),
        "multimodal_cfg": {
            "context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": 96, "heads": 3, "layers": 2,
            "attn_pooler_heads": 4,
        },  # fmt: skip
        "custom_text": True,
    }
    return {CLIP_NAME: clip, COCA_NAME: coca}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _all_template_captions() -> list[str]:
    # Every word of the vocabulary at least once, whatever the sample below happens to draw.
    rng = random.Random(0)
    out = []
    for colour in sw.COLOURS:
        for shape in sw.SHAPES:
            for bg in sw._BACKGROUNDS_FOR[colour]:
                scene = sw.Scene(shape, colour, bg, rng.choice(sw.SIZES), rng.choice(sw.POSITIONS))
                out.extend(t.format(c=colour, s=shape, bg=bg, sz=scene.size, pos=scene.position) for t in sw.TEMPLATES)
    return out


def build_tokenizer(out: Path) -> SentencePieceTokenizer:
    captions = _all_template_captions() + [p.caption for p in sw.make_pairs(5000, seed=0, mismatch_rate=0.0, split="train")]
    # Character-level: the synthweb vocabulary is ~50 characters, and Chinese words split cleanly.
    model = train_sentencepiece(captions, out / TOKENIZER_FILE.removesuffix(".model"), vocab_size=200, model_type="char",
                                character_coverage=1.0, byte_fallback=False)  # fmt: skip
    return SentencePieceTokenizer(model, CONTEXT_LENGTH)


def render_dataset(pairs: Sequence[sw.Pair], preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """uint8 [N,3,H,W] of the pairs' images after the geometric part of `preprocess`.

    Stored as bytes (normalised per batch) so that 30k images fit in ~370 MB.
    """
    geometric = preprocess.transforms[:-2]  # type: ignore[attr-defined]  # all but ToTensor + Normalize
    out = torch.empty(len(pairs), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for i, pair in enumerate(pairs):
        data = sw.encode_jpeg(sw.render(pair.scene, SOURCE_SIZE), SOURCE_QUALITY)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for t in geometric:
            img = t(img)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def normaliser(preprocess: Callable[[Image.Image], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    norm = preprocess.transforms[-1]  # type: ignore[attr-defined]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return lambda u8: (u8.float() / 255.0 - mean) / std


def _contrastive(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    logits = scale * img @ txt.T
    # Identical caption strings in one batch are both right: a plain InfoNCE would push the image
    # away from its twin's (equal) caption. Soft targets spread the probability over the twins.
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions])
    same = (key[:, None] == key[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean() + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    name: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    captions: Sequence[str],
    norm: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    caption_weight: float = 0.0,
    on_epoch: Callable[[torch.nn.Module], None] | None = None,
) -> None:
    """AdamW + cosine schedule; CoCa (caption_weight > 0) adds its captioning loss as open_clip does."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    n = len(images)
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    step = 0
    start = time.monotonic()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, lr, warmup=min(200, total // 10))
            x, t = norm(images[idx]), tokens[idx]
            caps = [captions[i] for i in idx.tolist()]
            if caption_weight:
                out = model(x, t)
                loss = _contrastive(F.normalize(out["image_features"], dim=-1), F.normalize(out["text_features"], dim=-1), out["logit_scale"], caps)
                cap_loss = F.cross_entropy(out["logits"].permute(0, 2, 1), out["labels"], ignore_index=PAD_ID)
                loss = loss + caption_weight * cap_loss
            else:
                img = model.encode_image(x, normalize=True)
                txt = model.encode_text(t, normalize=True)
                loss = _contrastive(img, txt, model.logit_scale.exp(), caps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            run_loss += loss.item()
            run_n += 1
            step += 1
        _say(f"[{name}] epoch {epoch + 1}/{epochs} loss {run_loss / max(1, run_n):.3f} ({time.monotonic() - start:.0f}s)")
        if on_epoch is not None:  # a checkpoint per epoch: a long build can be inspected or cut short
            model.eval()
            on_epoch(model)
            model.train()
    model.eval()


def _create(name: str, config_dir: Path) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor]]:
    import open_clip

    open_clip.add_model_config(config_dir / f"{name}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None:
        # open_clip 3.3 never initialises the CoCa decoder's output projection (torch.empty: garbage
        # and NaN losses), and its init_parameters() is broken; the rest has PyTorch's default init.
        torch.nn.init.normal_(decoder.text_projection, std=decoder.width**-0.5)
    return model, preprocess


def _fp16_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state rounded through fp16 (what is saved), back in float32."""
    return {k: v.detach().to(torch.float16).float() if v.is_floating_point() else v for k, v in state.items()}


def save_fp16(model: torch.nn.Module, path: Path) -> None:
    # fp16 halves the committed size; loading casts back to float32.
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def build(
    out: Path,
    *,
    n_train: int = 30000,
    clip_epochs: int = 12,
    coca_epochs: int = 8,
    coca_extra_epochs: int = 6,
    batch_size: int = 256,
    seed: int = 0,
    threads: int = 2,
    which: Sequence[str] = (CLIP_NAME, COCA_NAME),
    resume_coca: Path | None = None,
) -> dict[str, Path]:
    """Write the tokenizer, configs and the checkpoints of `which` under `out`; return their paths."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    tok = build_tokenizer(out)
    _say(f"tokenizer: {tok.vocab_size} ids -> {out / TOKENIZER_FILE}")
    configs = model_configs(tok.vocab_size)
    for name, cfg in configs.items():
        (out / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")

    pairs = [p for p in sw.make_pairs(n_train, seed=seed, mismatch_rate=0.0, split="train") if p.matched]
    captions = [p.caption for p in pairs]
    tokens = tok(captions)
    written = {"tokenizer": out / TOKENIZER_FILE}
    images = None
    for i, name in enumerate(which):
        torch.manual_seed(seed + i)
        model, preprocess = _create(name, out)
        if images is None:
            t0 = time.monotonic()
            images = render_dataset(pairs, preprocess)
            _say(f"rendered {len(pairs)} training images in {time.monotonic() - t0:.0f}s")
        params = sum(p.numel() for p in model.parameters())
        _say(f"[{name}] {params / 1e6:.2f}M parameters")
        is_coca = name == COCA_NAME
        path = out / f"{name}.pt"
        # CoCa's ViT learns shapes much more slowly than CLIP's ResNet (after its first cosine run
        # it names the colour of every held-out image but the shape of fewer than half), so it
        # gets a second, gentler cosine run. Weights are rounded to fp16 in between, as saved
        # after stage one, so a build that resumes from that file gives the same result.
        stages = [(coca_epochs, 1e-3), (coca_extra_epochs, 5e-4)] if is_coca else [(clip_epochs, 1e-3)]
        for stage, (epochs, lr) in enumerate(stages):
            if resume_coca is not None and is_coca and stage == 0:
                model.load_state_dict(_fp16_state(torch.load(resume_coca, weights_only=True)))
                _say(f"[{name}] stage 1 resumed from {resume_coca}")
                continue
            if epochs <= 0:
                continue
            train(name, model, images, tokens, captions, normaliser(preprocess),
                  epochs=epochs, batch_size=batch_size // 2 if is_coca else batch_size,
                  lr=lr, seed=seed + i + 100 * stage, caption_weight=2.0 if is_coca else 0.0,
                  on_epoch=(lambda m, p=path: save_fp16(m, p)))  # fmt: skip
            model.load_state_dict(_fp16_state(model.state_dict()))
        save_fp16(model, path)
        written[name] = path
        _say(f"[{name}] wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    _say(f"done in {time.monotonic() - started:.0f}s")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TINY_DIR, help="output folder (default: the package's tiny/)")
    parser.add_argument("--n-train", type=int, default=30000)
    parser.add_argument("--clip-epochs", type=int, default=12)
    parser.add_argument("--coca-epochs", type=int, default=8)
    parser.add_argument("--coca-extra-epochs", type=int, default=6)
    parser.add_argument("--resume-coca", type=Path, help="skip CoCa's first stage: start from this checkpoint (its output)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=[CLIP_NAME, COCA_NAME], action="append", help="build only this model (repeatable)")
    args = parser.parse_args(argv)
    build(args.out, n_train=args.n_train, clip_epochs=args.clip_epochs, coca_epochs=args.coca_epochs,
          coca_extra_epochs=args.coca_extra_epochs, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
          which=args.only or (CLIP_NAME, COCA_NAME), resume_coca=args.resume_coca)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
