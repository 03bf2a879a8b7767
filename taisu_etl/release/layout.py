"""Where each file of a release lives in the object store, and which names are allowed.

Everything of release NAME is under `releases/NAME/`; `manifest.json` is written last and is the
only commit point: a release exists exactly when its manifest does. A takedown patch rewrites files
at the same keys (download URLs and webdataset brace patterns keep working) and keeps the earlier
versions' manifests and id lists under `history/vN/`.
"""

from __future__ import annotations

import re

from taisu_etl.release.errors import ReleaseError

ROOT = "releases"
MANIFEST = "manifest.json"
SHA256SUMS = "SHA256SUMS"
README = "README.md"
IDS = "ids.txt"
REMOVED = "removed.txt"
CARD_DIR = "card"
TAISU_IMAGES = "taisu/images"
TAISU_CAPTIONS_JSON = "taisu/captions.json"
TAISU_CAPTIONS_JSONL = "taisu/captions.jsonl"
TAISU_CAPTIONS_TXT = "taisu/captions.txt"
WDS_DIR = "webdataset"
WDS_SIZES = "webdataset/sizes.json"  # open_clip's get_dataset_size() reads this next to the shards
PARQUET_DIR = "parquet"
# A takedown patch keeps each earlier version's manifest and id list here (ids, never images), so a
# holder of an older copy can tell which version they have and `release diff NAME@N NAME` works.
HISTORY_DIR = "history"

# Names become one key segment and appear in file listings: keep them boring. No ':' so that the
# LATEST sentinel of ReleaseOptions.parent can never be a real name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("."):
        raise ReleaseError(
            f"bad release name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def prefix(name: str) -> str:
    """Key prefix of every file of the release (with the trailing '/', so `r1` never matches `r10`)."""
    return f"{ROOT}/{check_name(name)}/"


def key(name: str, path: str) -> str:
    return prefix(name) + path


def shard_name(index: int) -> str:
    """The shard's stem, shared by its file in every format (`taisu/images/00012.tar`, `webdataset/00012.tar`)."""
    return f"{index:05d}"


def taisu_part(shard: str, tgz: bool) -> str:
    return f"{TAISU_IMAGES}/{shard}.{'tgz' if tgz else 'tar'}"


def wds_shard(shard: str) -> str:
    return f"{WDS_DIR}/{shard}.tar"


def parquet_part(shard: str) -> str:
    return f"{PARQUET_DIR}/{shard}.parquet"


def history_manifest(version: int) -> str:
    return f"{HISTORY_DIR}/v{version}/{MANIFEST}"


def history_ids(version: int) -> str:
    return f"{HISTORY_DIR}/v{version}/{IDS}"


def pending_patch(version: int) -> str:
    """The ids an unfinished patch to `version` removes: written before it rewrites any file, deleted
    after the ledger records the version, so a re-run removes at least those (see patch.py)."""
    return f"{HISTORY_DIR}/v{version}.pending"


def is_pending_patch(path: str) -> bool:
    return path.startswith(HISTORY_DIR + "/v") and path.endswith(".pending")


def split_version(spec: str) -> tuple[str, int | None]:
    """`NAME@N` -> (NAME, N); plain `NAME` -> (NAME, None), the current version."""
    name, at, version = spec.partition("@")
    if not at:
        return check_name(name), None
    if not version.isdigit() or int(version) < 1:
        raise ReleaseError(f"bad release version in {spec!r}: write NAME@N with N a version number from 1 (e.g. {name}@1)")
    return check_name(name), int(version)
