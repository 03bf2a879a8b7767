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
    found = read_manifest_bytes(store, name)
    return None if found is None else found[1]


def version_of(manifest: dict[str, Any]) -> int:
    """The manifest's release version: 1 as published, +1 per takedown patch (manifests before versions: 1)."""
    return int(manifest.get("version", 1))


def read_manifest_bytes(store: ObjectStore, name: str) -> tuple[bytes, dict[str, Any]] | None:
    """The manifest of `name` as stored (its sha256 is the version's id in the ledger) and parsed."""
    try:
        data = store.get(layout.key(name, layout.MANIFEST))
    except KeyError:
        return None
    return data, parse_manifest(data, name)


def parse_manifest(data: bytes, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"the manifest of release {name} is not valid JSON ({exc}): the release is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReleaseError(f"the manifest of release {name} is not a {FORMAT} manifest")
    return manifest


def file_entries(manifest: dict[str, Any]) -> dict[str, FileEntry]:
    """The manifest's files by path."""
    return {f["path"]: FileEntry(f["path"], f["sha256"], int(f["bytes"])) for f in manifest["files"]}
