"""Image and text embeddings of an open_clip model, for TaiSu's retrieval filter."""

from __future__ import annotations

from taisu_etl.models import _torchvision_shim  # noqa: F401  (must precede torchvision/open_clip)

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from taisu_etl.models._loading import Loaded, autocast, load_model
from taisu_etl.models.spec import ModelSpec

if TYPE_CHECKING:
    from taisu_etl.storage.base import ObjectStore


class ClipScorer:
    """Embeds images and captions into one space; cosine similarity says how well they match.

    `model_id` names architecture and weights (sha256 of the checkpoint): scores from different
    models are never comparable, so the ledger keys scores by it.
    """

    def __init__(self, loaded: Loaded) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.model_id: str = loaded.model_id
        self.device: torch.device = loaded.device
        self.image_size: int = loaded.image_size
        self.context_length: int = loaded.context_length
        self.tokenizer = loaded.tokenizer

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "auto", store: ObjectStore | None = None) -> ClipScorer:
        return cls(load_model(spec, device=device, store=store, kind="clip"))

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> [3,H,W] float tensor; picklable, for DataLoader worker processes."""
        return self._loaded.preprocess

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] preprocessed pixels -> L2-normalised float32 [N,D] on the CPU."""
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be [N,3,H,W], not {list(pixels.shape)}")
        if len(pixels) == 0:
            return torch.empty(0, self._embed_dim())
        with torch.inference_mode(), autocast(self.device):
            out = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        # Normalised after the cast back to float32: bf16 norms are off by ~1e-2.
        return F.normalize(out.float(), dim=-1).cpu()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> L2-normalised float32 [N,D] on the CPU."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a sequence of captions, not one string")
        if len(texts) == 0:
            return torch.empty(0, self._embed_dim())
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        with torch.inference_mode(), autocast(self.device):
            out = self.model.encode_text(tokens.to(self.device))
        return F.normalize(out.float(), dim=-1).cpu()

    def _embed_dim(self) -> int:
        return int(self._loaded.config["embed_dim"])
