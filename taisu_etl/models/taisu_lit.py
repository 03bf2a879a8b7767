"""TaiSu's released LiT models (the ones it filtered its pairs with) as a scorer.

Facts relied on, from TaiSu's public repository (ksOAn6g5/TaiSu):

- `eval/models/model_infer.py` `build_lit(visual_model_path, txt_model_path)`: the image file is
  `torch.load`ed as a plain OpenAI-CLIP state dict and only its `visual.*` keys are used
  (`load_state_dict(strict=False)`; the rest, e.g. CLIP's own English text tower, is ignored). The
  tower is inferred from the shapes as OpenAI's `build_model` does: "visual.proj" present means a
  ViT (width = conv1 out channels, patch = conv1 kernel, layers = count of
  `.attn.in_proj_weight`, resolution = patch * sqrt(positional rows - 1), heads = width / 64),
  otherwise a ModifiedResNet (blocks per `visual.layer1..4`, width = layer1.0.conv1 out
  channels, resolution = 32 * sqrt(attnpool positional rows - 1), heads = width * 32 / 64).
  `encode_image` is the bare tower output (ViT: ln_post(class token) @ proj; ResNet: the
  attention pool's c_proj).
- Same file, `build_txt_model(torch.load(txt_model_path)["weights"])`: a CLIP text transformer
  with keys `token_embedding.weight` [vocab, width], `positional_embedding` [context, width],
  `transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj.*,ln_2,mlp.c_fc.*,mlp.c_proj.*}`,
  `ln_final.*`, `text_projection` [width, embed] and `logit_scale`; heads = width / 64, causal
  mask (-inf above the diagonal), QuickGELU MLP (OpenAI's blocks), post-LN `ln_final`, pooled at
  `text.argmax(dim=-1)` (the EOT, the largest id) and multiplied by `text_projection`. The keys
  "input_resolution", "context_length" and "vocab_size" are dropped if present. TaiSu's released
  tower: width 512, 12 layers, 8 heads, context 52, vocabulary 50,002.
- `semantic_filtering/cleaner.py`: texts through `SentencepieceChineseTokenizer(52)` (see
  taisu_tokenizer.py), image and text features L2-normalised, score = their dot product (the
  logit scale is not applied), under CUDA autocast. Images go through CLIP's `_transform(224)`:
  bicubic resize of the short side to 224, centre crop 224, RGB, [0,1], normalise with CLIP's
  mean/std; open_clip's `image_transform(224, is_train=False)` is that same pipeline.

Both towers here are open_clip's own modules (ModifiedResNet / VisionTransformer with QuickGELU,
TextTransformer with argmax pooling), whose parameter names are OpenAI's, so the checkpoints load
as they are. TaiSu ran its text tower in float16; here float32 on the CPU, bf16 autocast on CUDA,
as for every other scorer.
"""

from __future__ import annotations

from taisu_etl.models import _torchvision_shim  # noqa: F401  (must precede torchvision/open_clip)

import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from taisu_etl.models._loading import Loaded, fit_problems, read_bytes, read_object
from taisu_etl.models.errors import ModelError
from taisu_etl.models.spec import SENTENCEPIECE_PREFIX, TAISU_LIT_ARCH, ModelSpec, taisu_lit_spec
from taisu_etl.models.taisu_tokenizer import CONTEXT_LENGTH, EOT_ID, VOCAB_SIZE, TaisuTokenizer

if TYPE_CHECKING:
    from taisu_etl.storage.base import ObjectStore

_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's metadata entries


class TaisuLiT(nn.Module):
    """The pair as one module with open_clip's `encode_image` / `encode_text` (unnormalised)."""

    def __init__(self, visual: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # kept for completeness; scores never use it

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


def _require(state: Mapping[str, torch.Tensor], key: str, where: str, what: str) -> torch.Tensor:
    value = state.get(key)
    if value is None:
        raise ModelError(f"{what} {where} has no {key!r}; it is not TaiSu's {what} (OpenAI CLIP key layout expected)")
    return value


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _check_fits(state: Mapping[str, torch.Tensor], module: nn.Module, prefix: str, where: str, what: str) -> None:
    """Every key and shape of the module in the file and nothing else; one error naming them."""
    expected = {prefix + k: v for k, v in module.state_dict().items()}
    shown = fit_problems(state, expected, got_where="", want_where="is expected", outside="part of the tower")
    if shown:
        raise ModelError(f"{what} {where} does not fit TaiSu's layout: {shown}")


def _construct(what: str, where: str, cls: type[nn.Module], **kwargs: Any) -> nn.Module:
    """The tower on the meta device: its random init (seconds for RN101) would be thrown away."""
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    # Shapes inferred from a damaged file can be ones no tower can have (heads not dividing width).
    except (AssertionError, RuntimeError, ValueError, ZeroDivisionError) as exc:
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items() if isinstance(v, (int, list)))
        raise ModelError(f"{what} {where}: its shapes give no valid {cls.__name__} ({shown}): {exc}") from exc


def _load_weights(tower: nn.Module, state: dict[str, torch.Tensor]) -> None:
    tower.load_state_dict(state, strict=True, assign=True)  # assign: the meta tensors are replaced
    if getattr(tower, "attn_mask", None) is not None:  # the text tower's causal mask is not in the file
        tower.register_buffer("attn_mask", tower.build_causal_mask().to("cpu"), persistent=False)  # type: ignore[operator]
    left = [name for name, t in [*tower.named_parameters(), *tower.named_buffers()] if t.is_meta]
    if left:  # a tensor neither in the file nor rebuilt: would fail at the first forward
        raise ModelError(f"internal error: {type(tower).__name__} has no weights for {', '.join(left[:4])}")


def _float_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # OpenAI's and TaiSu's files are partly float16; the towers compute in float32 (or bf16 autocast).
    return {k[len(prefix):]: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def build_visual(state: Mapping[str, torch.Tensor], where: str = "<state dict>") -> tuple[nn.Module, str, int, int]:
    """(image tower with the weights loaded, its name, embed dim, image size) from `visual.*` keys."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import QuickGELU, VisionTransformer

    what = "image tower checkpoint"
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise ModelError(f"{what} {where} has no visual.* keys; give OpenAI CLIP's RN101 or ViT-B/32 state dict")
    bad = [k for k, v in visual.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{what} {where}: {bad[0]} is not a tensor")
    if "visual.proj" in visual:
        conv1 = _require(visual, "visual.conv1.weight", where, what)
        width, patch = int(conv1.shape[0]), int(conv1.shape[-1])
        layers = _count_blocks(visual, "visual.transformer.resblocks.")
        grid = round((int(_require(visual, "visual.positional_embedding", where, what).shape[0]) - 1) ** 0.5)
        image_size, embed_dim = patch * grid, int(visual["visual.proj"].shape[1])
        tower: nn.Module = _construct(
            what, where, VisionTransformer, image_size=image_size, patch_size=patch, width=width, layers=layers,
            heads=max(width // 64, 1), mlp_ratio=4.0, output_dim=embed_dim, act_layer=QuickGELU,
        )
        name = "ViT-B-32" if (width, patch, layers) == (768, 32, 12) else f"ViT-w{width}-p{patch}-l{layers}"
    else:
        blocks = tuple(_count_blocks(visual, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        width = int(_require(visual, "visual.layer1.0.conv1.weight", where, what).shape[0])
        pos = int(_require(visual, "visual.attnpool.positional_embedding", where, what).shape[0])
        side = round((pos - 1) ** 0.5)
        if side * side + 1 != pos or 0 in blocks:
            raise ModelError(f"{what} {where}: visual.attnpool.positional_embedding has {pos} rows, not a square grid + 1")
        image_size = side * 32
        embed_dim = int(_require(visual, "visual.attnpool.c_proj.weight", where, what).shape[0])
        tower = _construct(what, where, ModifiedResNet, layers=list(blocks), output_dim=embed_dim, heads=width * 32 // 64,
                           image_size=image_size, width=width)
        known = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101"}
        name = known.get(blocks, "RN" + "-".join(map(str, blocks))) if width == 64 else f"RN-w{width}-" + "-".join(map(str, blocks))
    _check_fits(visual, tower, "visual.", where, what)
    _load_weights(tower, _float_state(visual, "visual."))
    return tower, name, embed_dim, image_size


def build_text(state: Mapping[str, torch.Tensor], where: str = "<state dict>") -> tuple[nn.Module, int, int]:
    """(text tower with the weights loaded, embed dim, context length) from TaiSu's "weights"."""
    from open_clip.transformer import QuickGELU, TextTransformer

    what = "text tower checkpoint"
    state = {k: v for k, v in state.items() if k not in _IGNORED_KEYS and k != "logit_scale"}
    vocab, width = (int(s) for s in _require(state, "token_embedding.weight", where, what).shape)
    if vocab != VOCAB_SIZE:
        raise ModelError(
            f"{what} {where}: token_embedding.weight has {vocab:,} rows, but TaiSu's tokenizer needs {VOCAB_SIZE:,} "
            f"(50,000 SentencePiece ids, SOT 50000, EOT {EOT_ID}); this is not TaiSu's text tower"
        )
    context = int(_require(state, "positional_embedding", where, what).shape[0])
    embed_dim = int(_require(state, "text_projection", where, what).shape[-1])
    layers = _count_blocks(state, "transformer.resblocks.")
    tower = _construct(
        what, where, TextTransformer, context_length=context, vocab_size=vocab, width=width, heads=max(width // 64, 1),
        layers=layers, output_dim=embed_dim, act_layer=QuickGELU, pool_type="argmax", proj_type="linear", proj_bias=False,
    )
    _check_fits(state, tower, "", where, what)
    _load_weights(tower, _float_state(state, ""))
    return tower, embed_dim, context


def _text_state(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not isinstance(obj.get("weights"), dict):
        raise ModelError(f"text tower checkpoint {where} has no 'weights' entry; TaiSu saves its text tower as {{'weights': state_dict}}")
    state = obj["weights"]
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"text tower checkpoint {where}: weights[{bad[0]!r}] is not a tensor")
    return state


def load_taisu_lit(spec: ModelSpec, *, device: torch.device, store: ObjectStore | None) -> Loaded:
    """Load the pair of `spec` (arch "taisu-lit") onto `device`, in eval mode."""
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform

    if not spec.checkpoint or not spec.text_checkpoint or not spec.tokenizer.startswith(SENTENCEPIECE_PREFIX):
        raise ModelError(f"{TAISU_LIT_ARCH} needs three files: use {TAISU_LIT_ARCH}:visual=PATH,text=PATH,sp=PATH "
                         "(in a recipe: checkpoint, text_checkpoint, tokenizer = \"sentencepiece:PATH\")")
    proto, sp_where = read_bytes(spec.tokenizer.removeprefix(SENTENCEPIECE_PREFIX), store, what="tokenizer")
    tokenizer = TaisuTokenizer(proto, sp_where)  # before the big files: a wrong vocabulary fails at once
    visual_obj, visual_sha, visual_where = read_object(spec.checkpoint, store)
    if isinstance(visual_obj, dict) and isinstance(visual_obj.get("state_dict"), dict):
        visual_obj = visual_obj["state_dict"]
    if not isinstance(visual_obj, dict):
        raise ModelError(f"image tower checkpoint {visual_where} is not a state dict")
    text_obj, text_sha, text_where = read_object(spec.text_checkpoint, store)

    text_state = _text_state(text_obj, text_where)
    with torch.random.fork_rng(devices=[]):  # built on the meta device; the global RNG stays untouched regardless
        visual, name, embed_dim, image_size = build_visual(visual_obj, visual_where)
        text, text_dim, context = build_text(text_state, text_where)
    if text_dim != embed_dim:
        raise ModelError(f"the towers do not share a space: {text_where} text_projection gives {text_dim} dims, "
                         f"{visual_where} the image tower {embed_dim}; give the pair TaiSu released together")
    ctx = spec.context_length or context  # TaiSu's tower: 52
    if ctx > context:
        raise ModelError(f"context_length {ctx} exceeds the text tower's {context} (positional_embedding in {text_where})")
    tokenizer.context_length = ctx
    model = TaisuLiT(visual, text)
    logit_scale = text_state.get("logit_scale")
    if logit_scale is not None and logit_scale.numel() == 1:
        model.logit_scale.data.fill_(float(logit_scale))
    model.to(device).eval()
    sha = hashlib.sha256(f"{visual_sha}:{text_sha}:{tokenizer.sha256}".encode()).hexdigest()
    return Loaded(
        name=f"{TAISU_LIT_ARCH}-{name}",
        config={"embed_dim": embed_dim, "vision_cfg": {"image_size": image_size, "tower": name},
                "text_cfg": {"context_length": context, "vocab_size": VOCAB_SIZE}},
        model=model,
        preprocess=image_transform(image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD),
        tokenizer=tokenizer,
        context_length=ctx,
        model_id=f"{TAISU_LIT_ARCH}-{name}@{sha[:12]}",
        device=device,
        image_size=image_size,
    )


def write_random_checkpoints(
    folder: str | Path, captions: Iterable[str], *, visual: str = "RN101", sp_pieces: int = 2000, seed: int = 0,
) -> ModelSpec:
    """Random weights in TaiSu's files (visual.pt, text.pt) plus a SentencePiece model trained on
    `captions`, for benchmarks: throughput does not depend on the weights, and none can be
    downloaded here. `visual`: "RN101" or "ViT-B-32". Returns the spec that loads them."""
    import sentencepiece as spm
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if visual == "RN101":
            tower: nn.Module = ModifiedResNet(layers=[3, 4, 23, 3], output_dim=512, heads=32, image_size=224, width=64)
        elif visual == "ViT-B-32":
            tower = VisionTransformer(image_size=224, patch_size=32, width=768, layers=12, heads=12, mlp_ratio=4.0,
                                      output_dim=512, act_layer=QuickGELU)
        else:
            raise ModelError(f"unknown TaiSu image tower {visual!r}; use RN101 or ViT-B-32")
        text = TextTransformer(context_length=CONTEXT_LENGTH, vocab_size=VOCAB_SIZE, width=512, heads=8, layers=12,
                               output_dim=512, act_layer=QuickGELU, pool_type="argmax")
    # As OpenAI and TaiSu store them: float16 tensors, OpenAI's key names.
    torch.save({f"visual.{k}": v.half() if v.is_floating_point() else v for k, v in tower.state_dict().items()},
               folder / "visual.pt")
    weights = {k: v.half() if v.is_floating_point() else v for k, v in text.state_dict().items()}
    weights["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    torch.save({"weights": weights}, folder / "text.pt")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([c for c in captions if c.strip()]), model_prefix=str(folder / "sp"),
        vocab_size=sp_pieces, model_type="bpe", hard_vocab_limit=False, character_coverage=0.9995,
        minloglevel=2, num_threads=2,
    )
    return taisu_lit_spec(str(folder / "visual.pt"), str(folder / "text.pt"), str(folder / "sp.model"))
