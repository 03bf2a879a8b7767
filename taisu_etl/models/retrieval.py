"""TaiSu's retrieval filter and simpler score cut-offs, on numpy embeddings (no torch needed).

TaiSu kept a web pair only if, within a random group of pairs, the image ranks its own caption
first among the group's captions, or the caption ranks its own image first among the group's
images. A cosine threshold alone cannot tell a generic-but-right caption from a wrong one; ranks
within a group can, and need no tuned cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cosines of float32 embeddings carry ~1e-7 of rounding; equal-looking scores within this margin
# are ties, and ties never count against a pair (only a strictly higher score does).
_TIE_TOLERANCE = 1e-6


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array [N, D], not shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    # A zero vector (a failed embedding) has cosine 0 with everything, not NaN.
    return arr / np.where(norms == 0, 1.0, norms)


def _pair_matrices(image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img, txt = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    if img.shape != txt.shape:
        raise ValueError(f"image_emb {img.shape} and text_emb {txt.shape} must have the same shape")
    return img, txt


def pair_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of `image_emb` with row i of `text_emb`: float32 [N]."""
    img, txt = _pair_matrices(image_emb, text_emb)
    return np.einsum("nd,nd->n", img, txt).astype(np.float32)


@dataclass
class RuleResult:
    """Per pair, in input order: keep, rank of its caption for its image (1 = first), rank of its
    image for its caption, and the index of the group it was ranked in."""

    keep: np.ndarray
    image_rank: np.ndarray
    text_rank: np.ndarray
    group: np.ndarray


def taisu_rule(
    image_emb: np.ndarray, text_emb: np.ndarray, *, group_size: int = 120, seed: int = 0, mode: str = "or"
) -> RuleResult:
    """TaiSu's rule: shuffle the pairs (numpy Generator(seed)) into groups of `group_size` (the
    last may be smaller) and keep a pair when its image ranks its own caption first ("or": or its
    caption ranks its own image first; "and": both). A group of one keeps its pair.
    """
    if mode not in ("or", "and"):
        raise ValueError(f"mode must be 'or' or 'and', not {mode!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, not {group_size}")
    img, txt = _pair_matrices(image_emb, text_emb)
    n = len(img)
    order = np.random.default_rng(seed).permutation(n)
    image_rank = np.ones(n, dtype=np.int64)
    text_rank = np.ones(n, dtype=np.int64)
    group = np.zeros(n, dtype=np.int64)
    for g, start in enumerate(range(0, n, group_size)):
        rows = order[start : start + group_size]
        sims = img[rows] @ txt[rows].T  # [image, caption]
        own = np.diag(sims)
        # Rank = 1 + how many others score strictly higher; the diagonal never beats itself.
        image_rank[rows] = 1 + (sims > own[:, None] + _TIE_TOLERANCE).sum(axis=1)
        text_rank[rows] = 1 + (sims > own[None, :] + _TIE_TOLERANCE).sum(axis=0)
        group[rows] = g
    first_i, first_t = image_rank == 1, text_rank == 1
    keep = (first_i | first_t) if mode == "or" else (first_i & first_t)
    return RuleResult(keep=keep, image_rank=image_rank, text_rank=text_rank, group=group)


def threshold_rule(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Keep pairs scoring at least `threshold` (bool [N])."""
    return np.asarray(scores, dtype=np.float64) >= threshold


def quantile_rule(scores: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """Keep pairs scoring at least the `quantile` of these scores; returns (keep, cutoff).

    quantile 0.2 keeps about the best 80%. With no scores the cutoff is NaN and nothing is kept.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], not {quantile}")
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, dtype=bool), float("nan")
    cutoff = float(np.quantile(arr, quantile))
    return arr >= cutoff, cutoff
