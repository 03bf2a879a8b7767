"""Image and text embeddings of an open_clip model, for TaiSu's retrieval filter."""

from __future__ import annotations

from taisu_etl.models import _torchvision_shim  # noqa: F401  (must precede torchvision/open_clip)

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taisu_etl.models._loading import LoadedModel, autocast


class ClipScorer(LoadedModel):
    """Embeds images and captions into one space; cosine similarity says how well they match.

    `model_id` names architecture and weights (sha256 of the checkpoint): scores from different
    models are never comparable, so the ledger keys scores by it.
    """

    kind = "clip"

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
