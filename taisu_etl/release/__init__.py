"""Releases: versioned, reproducible packages of the ledger's accepted samples.

    create_release(ledger, store, name, ReleaseOptions(...))  -> ReleaseReport
    verify_release(store, name, ledger=...)                    -> VerifyReport
    diff_releases(store, a, b)                                 -> DiffReport

A release is the folder `releases/NAME/` of the object store: TaiSu-format image tars and caption
files, webdataset shards, Parquet metadata, `ids.txt`, `removed.txt`, a dataset card (README.md and
plots), SHA256SUMS and `manifest.json`, which is written last and is the release's commit point.
"""

from taisu_etl.release.build import ReleaseReport, create_release
from taisu_etl.release.diff import DiffReport, diff_releases, iter_diff
from taisu_etl.release.errors import ReleaseError, ReleaseExistsError, ReleaseNotFoundError
from taisu_etl.release.manifest import read_manifest
from taisu_etl.release.options import FORMATS, LATEST, ReleaseOptions
from taisu_etl.release.verify import Problem, VerifyReport, verify_release

__all__ = [
    "FORMATS",
    "LATEST",
    "DiffReport",
    "Problem",
    "ReleaseError",
    "ReleaseExistsError",
    "ReleaseNotFoundError",
    "ReleaseOptions",
    "ReleaseReport",
    "VerifyReport",
    "create_release",
    "diff_releases",
    "iter_diff",
    "read_manifest",
    "verify_release",
]
