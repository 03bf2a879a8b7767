"""The models suite needs the `ml` extra (torch, open_clip, sentencepiece); without it, it skips.

The committed tiny models are loaded once per session; held-out images go through the same path
as in the pipeline (the synthetic web's 256 px JPEG, decoded, the model's preprocess).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
import taisu_etl.models._torchvision_shim  # noqa: E402,F401  (before torchvision/open_clip)

pytest.importorskip("open_clip")
pytest.importorskip("sentencepiece")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from taisu_etl.models import CaptionGenerator, ClipScorer, builtin_spec  # noqa: E402
from taisu_etl.synthweb import scenes as sw  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pixels_of(pairs: Sequence[sw.Pair], preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """[N,3,H,W] of the pairs' images as served (JPEG) and preprocessed."""
    return torch.stack([
        preprocess(Image.open(io.BytesIO(sw.encode_jpeg(sw.render(p.scene, sw.DEFAULT_SIZE)))).convert("RGB"))
        for p in pairs
    ])  # fmt: skip


@pytest.fixture(scope="session")
def tiny_clip() -> ClipScorer:
    return ClipScorer.load(builtin_spec("tiny-clip"), device="cpu")


@pytest.fixture(scope="session")
def tiny_coca() -> CaptionGenerator:
    return CaptionGenerator.load(builtin_spec("tiny-coca"), device="cpu")
