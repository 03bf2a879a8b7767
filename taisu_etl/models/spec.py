"""What names a model: architecture, weights, tokenizer (no torch needed to build one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taisu_etl.models.errors import ModelError

TINY_DIR = Path(__file__).resolve().parent / "tiny"
BUILTIN_PREFIX = "builtin:"
STORE_PREFIX = "store:"
SENTENCEPIECE_PREFIX = "sentencepiece:"
TAISU_LIT_ARCH = "taisu-lit"  # TaiSu's released LiT pair: OpenAI-CLIP image tower + Chinese text tower

# name -> (config file, checkpoint file) inside TINY_DIR; the tokenizer is shared.
BUILTINS: dict[str, tuple[str, str]] = {
    "tiny-clip": ("tiny-clip.json", "tiny-clip.pt"),
    "tiny-coca": ("tiny-coca.json", "tiny-coca.pt"),
}
BUILTIN_TOKENIZER = "tiny-zh.model"


@dataclass(frozen=True)
class ModelSpec:
    """A model to load.

    arch: an open_clip built-in model name, a path to an open_clip JSON config (the model name is
        the file stem), or "builtin:tiny-clip" / "builtin:tiny-coca".
    checkpoint: a local file, or "store:<object key>" read through the ObjectStore given to
        `load`; "" means random initial weights (seeded, for tests only).
    tokenizer: "open_clip" (the arch's own), "sentencepiece:<path to .model>", or "builtin" (the
        tiny models' vocabulary).
    context_length: tokens per text; default: the arch's.
    text_checkpoint: arch "taisu-lit" only: the text tower's file (TaiSu's {"weights": ...});
        `checkpoint` is then the OpenAI-CLIP image tower and `tokenizer` "sentencepiece:<path>"
        (CogView's cog-pretrain.model; a path or store:<key>).
    """

    arch: str
    checkpoint: str
    tokenizer: str = "open_clip"
    context_length: int | None = None
    text_checkpoint: str = ""


def builtin_spec(name: str) -> ModelSpec:
    """The committed tiny model `name` ("tiny-clip" or "tiny-coca"), with paths inside the package."""
    name = name.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        raise ModelError(f"unknown built-in model {name!r}; known: {', '.join(BUILTINS)}")
    return ModelSpec(arch=BUILTIN_PREFIX + name, checkpoint=str(TINY_DIR / BUILTINS[name][1]), tokenizer="builtin")


def taisu_lit_spec(visual: str, text: str, sp: str, context_length: int | None = None) -> ModelSpec:
    """TaiSu's LiT pair: image tower file, text tower file, SentencePiece model (paths or store:<key>)."""
    return ModelSpec(arch=TAISU_LIT_ARCH, checkpoint=visual, text_checkpoint=text,
                     tokenizer=SENTENCEPIECE_PREFIX + sp, context_length=context_length)


def _parse_taisu_lit(text: str) -> ModelSpec:
    usage = f"use {TAISU_LIT_ARCH}:visual=PATH,text=PATH,sp=PATH[,context_length=N]"
    fields: dict[str, str] = {}
    for option in text.removeprefix(TAISU_LIT_ARCH + ":").split(","):
        key, sep, value = option.partition("=")
        if not sep or key not in ("visual", "text", "sp", "context_length") or not value:
            raise ModelError(f"bad option {option!r} in model spec {text!r}; {usage}")
        fields[key] = value
    missing = [k for k in ("visual", "text", "sp") if k not in fields]
    if missing:
        raise ModelError(f"model spec {text!r} lacks {', '.join(missing)}=; {usage}")
    ctx = fields.get("context_length")
    if ctx is not None and not ctx.isdigit():
        raise ModelError(f"context_length must be a whole number in model spec {text!r}")
    return taisu_lit_spec(fields["visual"], fields["text"], fields["sp"], int(ctx) if ctx else None)


def parse_spec(text: str) -> ModelSpec:
    """A spec from one command-line word: "tiny-clip", "builtin:tiny-coca",
    "ARCH=CHECKPOINT[,tokenizer=...][,context_length=N]" or
    "taisu-lit:visual=PATH,text=PATH,sp=PATH[,context_length=N]"."""
    text = text.strip()
    if text.removeprefix(BUILTIN_PREFIX) in BUILTINS:
        return builtin_spec(text)
    if text.startswith(TAISU_LIT_ARCH + ":"):
        return _parse_taisu_lit(text)
    arch, sep, rest = text.partition("=")
    if not sep:
        raise ModelError(f"bad model spec {text!r}; use tiny-clip, tiny-coca or ARCH=CHECKPOINT[,tokenizer=T][,context_length=N]")
    checkpoint, *options = rest.split(",")
    kwargs: dict[str, object] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "tokenizer":
            kwargs["tokenizer"] = value
        elif key == "context_length" and value.isdigit():
            kwargs["context_length"] = int(value)
        else:
            raise ModelError(f"bad option {option!r} in model spec {text!r}; known: tokenizer=, context_length=")
    return ModelSpec(arch=arch, checkpoint=checkpoint, **kwargs)  # type: ignore[arg-type]
