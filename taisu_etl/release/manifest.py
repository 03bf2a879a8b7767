"""The manifest (the release's commit point) and SHA256SUMS.

The manifest holds no time, host or store: the same ledger state gives the same bytes, so two
builds can be compared file by file, manifest included. When a release was published is in the
ledger's `release` row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taisu_etl.release import layout
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.tarwriter import Digest
from taisu_etl.storage import ObjectStore

FORMAT = "taisu-etl-release/1"


@dataclass(frozen=True)
class FileEntry:
    """One file of a release: path relative to `releases/NAME/`, sha256, size."""

    path: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.size}


def hash_file(path: Path) -> Digest:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return Digest(h.hexdigest(), size)


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode()


def sha256sums(files: list[FileEntry]) -> bytes:
    """`sha256sum -c` input: "<hex>  <path>" per line (two spaces: text mode, which is fine for any file)."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path)).encode()


def with_files(body: dict[str, Any], files: list[FileEntry]) -> dict[str, Any]:
    return {**body, "files": [f.as_dict() for f in sorted(files, key=lambda f: f.path)]}


def read_manifest(store: ObjectStore, name: str) -> dict[str, Any] | None:
    """The published manifest of `name`, or None when the release does not exist (no manifest)."""
    try:
        data = store.get(layout.key(name, layout.MANIFEST))
    except KeyError:
        return None
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"the manifest of release {name} is not valid JSON ({exc}): the release is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReleaseError(f"the manifest of release {name} is not a {FORMAT} manifest")
    return manifest
