"""What a release contains and how it is packaged: the recipe recorded in its manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.layout import check_name

FORMATS = ("taisu", "webdataset", "parquet")
# What a webdataset sample's `.txt` carries: the web caption (w), the generated one (g, falling back
# to w where a sample has none, so every sample stays trainable), or both (`.txt` = w, `.gen.txt` = g
# where the sample has one). Without generated captions (--no-generated-captions) every choice is w.
WDS_CAPTIONS = ("w", "g", "both")
# open_clip_train (open_clip_torch 3.3.0) asserts `shards >= --workers * world_size` for a webdataset
# it does not resample (open_clip_train/data.py), and params.py defaults --workers to 4: a small
# release is split into at least this many shards so the trainer's defaults work on one GPU.
OPEN_CLIP_DEFAULT_WORKERS = 4
# The parent a release is compared with when none is named: the newest published one. A ':' can
# never be in a release name, so this cannot collide with one.
LATEST = ":latest"


@dataclass(frozen=True)
class ReleaseOptions:
    """Selection and packaging of one release. `parent`: a release name, LATEST, or None (no parent)."""

    min_score: float | None = None
    generated_captions: bool = True
    sources: tuple[str, ...] = ()
    formats: tuple[str, ...] = FORMATS
    tgz: bool = False
    shard_size: int = 10_000
    parent: str | None = LATEST
    min_shards: int = OPEN_CLIP_DEFAULT_WORKERS
    wds_captions: str = "both"
    # Published `source`: relative to this folder when the ledger's source lies under it, else the
    # file name; never the builder's absolute path. Not recorded (it is the machine's layout).
    source_root: str | None = None

    def __post_init__(self) -> None:
        formats = tuple(self.formats)
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ReleaseError(f"unknown release format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
        if not formats:
            raise ReleaseError(f"no release format chosen: choose one or more of {', '.join(FORMATS)}")
        # Canonical order, so "parquet,taisu" and "taisu,parquet" are the same recipe (same manifest bytes).
        object.__setattr__(self, "formats", tuple(f for f in FORMATS if f in formats))
        object.__setattr__(self, "sources", tuple(sorted(set(self.sources))))
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ReleaseError(f"shard size must be a positive whole number of samples, got {self.shard_size!r}")
        if isinstance(self.min_shards, bool) or not isinstance(self.min_shards, int) or self.min_shards < 1:
            raise ReleaseError(f"minimum shard count must be a positive whole number, got {self.min_shards!r}")
        if self.wds_captions not in WDS_CAPTIONS:
            raise ReleaseError(f"unknown webdataset caption choice {self.wds_captions!r}: choose one of {', '.join(WDS_CAPTIONS)}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ReleaseError(f"minimum score must be a finite number, got {self.min_score!r}")
        if self.parent not in (None, LATEST):
            check_name(self.parent)
        for pattern in self.sources:
            if not pattern:
                raise ReleaseError("an empty source pattern matches nothing: drop it or use '*'")

    def recipe(self, parent: str | None) -> dict[str, Any]:
        """The options as recorded in the manifest and the ledger, with the parent resolved."""
        return {
            "min_score": self.min_score,
            "generated_captions": self.generated_captions,
            "sources": list(self.sources),
            "formats": list(self.formats),
            "tgz": self.tgz,
            "shard_size": self.shard_size,
            "parent": parent,
            "min_shards": self.min_shards,
            "wds_captions": self.wds_captions,
            # TaiSu parts and caption files name a sample ingested from TaiSu by TaiSu's own id (its
            # url_id beside it in the caption files); recipes without the key used url_id throughout.
            "taisu_ids": True,
            "published_source": "relative" if self.source_root else "name",
        }


# What a recipe without a key meant before the key existed, so that older releases verify and patch
# exactly as they were built: one shard minimum, web captions only in `.txt`, url_id names in the
# TaiSu parts, the ledger's `source` as it was.
OLD_RECIPE_DEFAULTS: dict[str, Any] = {"min_shards": 1, "wds_captions": "w", "taisu_ids": False, "published_source": "ledger"}


def recipe_value(recipe: dict[str, Any], key: str) -> Any:
    """`recipe[key]`, or its meaning in a recipe written before the key existed."""
    return recipe.get(key, OLD_RECIPE_DEFAULTS[key])
