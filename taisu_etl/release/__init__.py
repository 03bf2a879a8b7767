"""Releases: versioned, reproducible packages of the ledger's accepted samples.

    create_release(ledger, store, name, ReleaseOptions(...))  -> ReleaseReport
    verify_release(store, name, ledger=...)                    -> VerifyReport
    diff_releases(store, a, b)                                 -> DiffReport

A release is the folder `releases/NAME/` of the object store: TaiSu-format image tars and caption
files, webdataset shards, Parquet metadata, `ids.txt`, `removed.txt`, a dataset card (README.md and
plots), SHA256SUMS and `manifest.json`, which is written last and is the release's commit point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taisu_etl.release.build import ReleaseReport, create_release
    from taisu_etl.release.diff import DiffReport, diff_releases, iter_diff
    from taisu_etl.release.errors import ReleaseBusyError, ReleaseError, ReleaseExistsError, ReleaseNotFoundError, ReleaseTakenOverError
    from taisu_etl.release.manifest import read_manifest
    from taisu_etl.release.options import FORMATS, LATEST, ReleaseOptions
    from taisu_etl.release.verify import Problem, VerifyReport, verify_release

# Imported on first use (PEP 562): `taisu-etl release ...` and every other command import
# taisu_etl.release.cli, which would otherwise load the writers (pyarrow, webdataset, the ledger
# queries) at start-up, about 0.8 s of every command's start before any work.
_EXPORTS = {
    "ReleaseReport": "build", "create_release": "build",
    "DiffReport": "diff", "diff_releases": "diff", "iter_diff": "diff",
    "ReleaseError": "errors", "ReleaseExistsError": "errors", "ReleaseNotFoundError": "errors",
    "ReleaseBusyError": "errors", "ReleaseTakenOverError": "errors",
    "read_manifest": "manifest",
    "FORMATS": "options", "LATEST": "options", "ReleaseOptions": "options",
    "PatchReport": "patch", "WithdrawReport": "patch", "patch_release": "patch", "withdraw_release": "patch",
    "Problem": "verify", "VerifyReport": "verify", "verify_release": "verify",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FORMATS",
    "LATEST",
    "DiffReport",
    "Problem",
    "ReleaseBusyError",
    "ReleaseError",
    "ReleaseExistsError",
    "ReleaseNotFoundError",
    "ReleaseOptions",
    "ReleaseReport",
    "ReleaseTakenOverError",
    "PatchReport",
    "VerifyReport",
    "WithdrawReport",
    "create_release",
    "diff_releases",
    "iter_diff",
    "patch_release",
    "read_manifest",
    "verify_release",
    "withdraw_release",
]
