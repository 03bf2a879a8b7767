"""What a release contains and how it is packaged: the recipe recorded in its manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.layout import check_name

FORMATS = ("taisu", "webdataset", "parquet")
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
        }
