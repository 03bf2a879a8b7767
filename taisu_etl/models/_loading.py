"""Shared loading for the scorer and the captioner: arch, tokenizer, checkpoint, device.

Every failure a user can fix (missing file, wrong arch for a checkpoint, tokenizer that does not
fit the text tower, CUDA asked for but absent) becomes a ModelError naming the file and the fix.
"""

from __future__ import annotations

from taisu_etl.models import _torchvision_shim  # noqa: F401  (must precede torchvision/open_clip)

import contextlib
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Self

import torch
from PIL import Image

from taisu_etl.errors import StorageError
from taisu_etl.models.errors import ModelError
from taisu_etl.models.spec import (
    BUILTIN_PREFIX,
    BUILTIN_TOKENIZER,
    BUILTINS,
    SENTENCEPIECE_PREFIX,
    STORE_PREFIX,
    TAISU_LIT_ARCH,
    TINY_DIR,
    ModelSpec,
)
from taisu_etl.models.tokenizer import SentencePieceTokenizer


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():  # type: ignore[no-untyped-def]
    """open_clip warns that the model is "initialized randomly" before we load the checkpoint into
    it; in a task log that reads as if the weights were missing. Drop just that message."""
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)

if TYPE_CHECKING:
    from taisu_etl.storage.base import ObjectStore

_HASH_CHUNK = 1 << 20
_CJK_SPACE = re.compile(r"(?<=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]) +(?=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef])")


def choose_device(preference: str = "auto") -> torch.device:
    """"auto": the first CUDA GPU when torch sees one, else the CPU; "cpu", "cuda", "cuda:N" as given."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise ModelError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ModelError(
                f"device {preference!r} was asked for but torch {torch.__version__} ({build}) sees no CUDA GPU; "
                "use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device {preference!r} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise ModelError(f"unsupported device {preference!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Loaded:
    name: str
    config: dict[str, Any]
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    context_length: int
    model_id: str
    device: torch.device
    image_size: int


def _resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(open_clip model name, its config), registering JSON configs with open_clip."""
    import open_clip

    if arch.startswith(BUILTIN_PREFIX):
        name = arch.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTINS:
            raise ModelError(f"unknown built-in model {name!r}; known: {', '.join(BUILTINS)}")
        path = TINY_DIR / BUILTINS[name][0]
        if not path.is_file():
            raise ModelError(f"the built-in config {path} is missing; reinstall taisu-etl or run `taisu-etl models build-tiny`")
    elif arch.endswith(".json") or "/" in arch or "\\" in arch:
        path = Path(arch).expanduser()
        if not path.is_file():
            raise ModelError(f"model config file {path} does not exist; pass an open_clip model name or an existing JSON config")
    else:
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            known = ", ".join(open_clip.list_models()[:8])
            raise ModelError(
                f"unknown model arch {arch!r}: not an open_clip model name (e.g. {known}, ...: "
                "see open_clip.list_models()) nor a JSON config file"
            )
        return arch, cfg
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model config {path} cannot be read as JSON ({exc})") from exc
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelError(f"model config {path} is not an open_clip config (needs embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem, cfg


def _make_tokenizer(spec: ModelSpec, name: str, cfg: dict[str, Any]) -> tuple[Any, int]:
    import open_clip

    ctx = spec.context_length or int(cfg["text_cfg"].get("context_length", 77))
    kind = spec.tokenizer
    if kind == "open_clip" and spec.arch.startswith(BUILTIN_PREFIX):
        kind = "builtin"  # the tiny models' own tokenizer is the committed one
    if kind == "open_clip":
        tok = open_clip.get_tokenizer(name, context_length=ctx)
        vocab, have = int(cfg["text_cfg"].get("vocab_size", 49408)), getattr(tok, "vocab_size", None)
        if have is not None and have > vocab:
            raise ModelError(
                f"open_clip's tokenizer for {name} has {have} ids but the arch's text tower only {vocab}; "
                "give the arch's own tokenizer (tokenizer=sentencepiece:<path> or builtin)"
            )
        return tok, ctx
    if kind == "builtin":
        tok = SentencePieceTokenizer(TINY_DIR / BUILTIN_TOKENIZER, ctx)
    elif kind.startswith(SENTENCEPIECE_PREFIX):
        tok = SentencePieceTokenizer(Path(kind.removeprefix(SENTENCEPIECE_PREFIX)).expanduser(), ctx)
    else:
        raise ModelError(f"unknown tokenizer {kind!r}; use open_clip, builtin or sentencepiece:<path to .model>")
    # The text tower must have an embedding for every id, and must pool where EOS actually is.
    text_cfg = cfg["text_cfg"]
    vocab = int(text_cfg.get("vocab_size", 49408))
    if tok.vocab_size > vocab:
        raise ModelError(
            f"tokenizer {tok.model_file} has {tok.vocab_size} ids but the arch's text tower only {vocab}; "
            "set text_cfg.vocab_size in the config to the tokenizer's size"
        )
    pool = text_cfg.get("pool_type", "argmax")
    if not text_cfg.get("embed_cls"):  # CoCa's text tower pools its own appended token instead
        if pool == "argmax" and tok.eos_id != vocab - 1:
            raise ModelError(
                f"the arch pools the text at the largest token id (pool_type argmax), but the EOS of "
                f"{tok.model_file} is id {tok.eos_id}; set text_cfg.pool_type to \"eos\" and eos_id to {tok.eos_id}"
            )
        if pool == "eos" and int(text_cfg.get("eos_id", 2)) != tok.eos_id:
            raise ModelError(f"text_cfg.eos_id is {text_cfg.get('eos_id', 2)} but the EOS of {tok.model_file} is {tok.eos_id}; fix the config")
    if ctx > int(text_cfg.get("context_length", 77)):
        raise ModelError(f"context_length {ctx} exceeds the arch's {text_cfg.get('context_length', 77)}")
    return tok, ctx


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(_HASH_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def read_object(checkpoint: str, store: ObjectStore | None) -> tuple[Any, str, str]:
    """(what torch.load gives, sha256 of the file, where it was read) from a local file or
    "store:<key>" in the object store."""
    with tempfile.TemporaryFile() as tmp:
        sha, where = _copy_source(checkpoint, store, tmp, what="checkpoint")
        tmp.seek(0)
        try:
            obj = torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors of many kinds: all mean "not a checkpoint"
            raise ModelError(f"checkpoint {where} is not a torch state dict ({type(exc).__name__}: {exc})") from exc
    return obj, sha, where


def read_bytes(source: str, store: ObjectStore | None, *, what: str) -> tuple[bytes, str]:
    """(contents, where) of a small local file or "store:<key>" object (a tokenizer model)."""
    with tempfile.TemporaryFile() as tmp:
        _, where = _copy_source(source, store, tmp, what=what)
        tmp.seek(0)
        return tmp.read(), where


def _copy_source(source: str, store: ObjectStore | None, tmp: BinaryIO, *, what: str) -> tuple[str, str]:
    if source.startswith(STORE_PREFIX):
        key = source.removeprefix(STORE_PREFIX)
        if store is None:
            raise ModelError(f"{what} {source!r} is in the object store, but no store was given to load it from")
        try:
            with store.open(key) as src:
                sha = _copy_hashing(src, tmp)
        except KeyError:
            raise ModelError(f"{what} object {key!r} does not exist in {store.describe()}; upload it first") from None
        except StorageError as exc:
            raise ModelError(f"{what} object {key!r} cannot be read from {store.describe()}: {exc}") from exc
        return sha, f"{store.describe()}/{key}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist; check the path in the model spec")
    with path.open("rb") as src:
        sha = _copy_hashing(src, tmp)
    return sha, str(path)


def _read_checkpoint(checkpoint: str, store: ObjectStore | None) -> tuple[Mapping[str, torch.Tensor], str]:
    """(state dict, sha256 of the file), from a local file or the object store."""
    obj, sha, where = read_object(checkpoint, store)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {where} is not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, sha


def fit_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *,
                 got_where: str, want_where: str, outside: str) -> str | None:
    """What keeps `state` from loading into a module whose state dict is `expected` (missing keys,
    wrong shapes, keys the module lacks), the first four in one line; None when it fits."""
    problems = []
    for key, want in expected.items():
        got = state.get(key)
        if got is None:
            problems.append(f"{key} is missing")
        elif tuple(got.shape) != tuple(want.shape):
            problems.append(f"{key} is {list(got.shape)}{got_where} but {list(want.shape)} {want_where}")
    problems += [f"{key} is not {outside}" for key in state if key not in expected]
    if not problems:
        return None
    return "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")


def _check_fits(state: Mapping[str, torch.Tensor], model: torch.nn.Module, checkpoint: str, arch: str) -> None:
    shown = fit_problems(state, model.state_dict(), got_where=" in the checkpoint", want_where="in the arch", outside="in the arch")
    if shown:
        raise ModelError(f"checkpoint {checkpoint} does not fit arch {arch}: {shown}; pass the arch it was trained with")


class LoadedModel:
    """What the scorer and the captioner share: the loaded model's fields, loading and preprocessing."""

    kind: ClassVar[str]  # "clip" or "coca": what load_model builds for the subclass

    def __init__(self, loaded: Loaded) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.model_id: str = loaded.model_id
        self.device: torch.device = loaded.device
        self.image_size: int = loaded.image_size
        self.context_length: int = loaded.context_length
        self.tokenizer = loaded.tokenizer

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "auto", store: ObjectStore | None = None) -> Self:
        return cls(load_model(spec, device=device, store=store, kind=cls.kind))

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> [3,H,W] float tensor; picklable, for worker processes."""
        return self._loaded.preprocess

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_model(spec: ModelSpec, *, device: str, store: ObjectStore | None, kind: str) -> Loaded:
    """Build the open_clip model of `spec`, load its weights, move it to the device, eval mode."""
    import open_clip

    dev = choose_device(device)
    if spec.arch == TAISU_LIT_ARCH:
        if kind == "coca":
            raise ModelError("taisu-lit is TaiSu's retrieval model (LiT): it scores image-text pairs but cannot write captions")
        from taisu_etl.models.taisu_lit import load_taisu_lit

        return load_taisu_lit(spec, device=dev, store=store)
    name, cfg = _resolve_arch(spec.arch)
    is_coca = "multimodal_cfg" in cfg
    if kind == "coca" and not is_coca:
        raise ModelError(f"arch {spec.arch} is not a CoCa model (no multimodal_cfg), so it cannot write captions")
    tokenizer, ctx = _make_tokenizer(spec, name, cfg)
    if spec.checkpoint:
        state, sha = _read_checkpoint(spec.checkpoint, store)
    else:
        state, sha = None, "random-init"
    # Random init is seeded so that "" always means the same weights (and the same model id).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            with _quiet_random_init_warning():
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        except RuntimeError as exc:
            raise ModelError(f"open_clip cannot build arch {spec.arch}: {exc}") from exc
        decoder = getattr(model, "text_decoder", None)
        if decoder is not None and state is None:
            # open_clip 3.3 leaves the CoCa decoder projection uninitialised (torch.empty).
            torch.nn.init.normal_(decoder.text_projection, std=decoder.width**-0.5)
    if state is not None:
        _check_fits(state, model, spec.checkpoint, spec.arch)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    model.to(dev).eval()
    image_size = cfg["vision_cfg"].get("image_size", 224)
    image_size = image_size if isinstance(image_size, int) else int(image_size[0])
    return Loaded(
        name=name,
        config=cfg,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        context_length=ctx,
        model_id=f"{name}@{sha[:12]}",
        device=dev,
        image_size=image_size,
    )


def autocast(device: torch.device) -> Any:
    # bf16 on CUDA (as TaiSu-scale scoring needs); plain float32 on the CPU, where bf16 is slow.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def detokenise(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of generated ids without special tokens and without spaces between CJK characters."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.decode(ids)
    # open_clip's SimpleTokenizer: decode all, drop its markers, join CJK characters again.
    special = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None), 0}
    kept = []
    for i in ids:
        if i == getattr(tokenizer, "eot_token_id", None):
            break
        if i not in special:
            kept.append(int(i))
    text = tokenizer.decode(kept)
    for marker in ("<start_of_text>", "<end_of_text>"):
        text = text.replace(marker, "")
    return _CJK_SPACE.sub("", text).strip()

