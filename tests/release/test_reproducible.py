"""Same ledger state, same bytes: every file, manifest and card included."""

from __future__ import annotations

from pathlib import Path

from taisu_etl.db.engine import make_engine
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.migrate import upgrade
from taisu_etl.release import ReleaseOptions, create_release
from taisu_etl.storage import LocalObjectStore

from .support import download_release, read_files, seed

OPTIONS = ReleaseOptions(shard_size=6, tgz=True, parent=None)


def _fresh_sqlite(path: Path) -> Ledger:
    url = f"sqlite:///{path}"
    upgrade(make_engine(url))
    return Ledger.open(url, shards=4, recipe_version="test")


def test_two_builds_from_the_same_ledger_state_are_byte_identical(ledger: Ledger, tmp_path: Path) -> None:
    """One build on SQLite, one on the parametrised ledger (SQLite or Postgres): independent ledgers and
    stores holding the same samples give the same files, bit for bit."""
    first = _fresh_sqlite(tmp_path / "first.db")
    try:
        store_a, store_b = LocalObjectStore(tmp_path / "a"), LocalObjectStore(tmp_path / "b")
        seed(first, store_a)
        seed(ledger, store_b)
        create_release(first, store_a, "v1", OPTIONS)
        create_release(ledger, store_b, "v1", OPTIONS)
    finally:
        first.dispose()
    a = read_files(download_release(store_a, "v1", tmp_path / "out-a"))
    b = read_files(download_release(store_b, "v1", tmp_path / "out-b"))
    assert "manifest.json" in a and "card/wordcloud.png" in a and "parquet/00000.parquet" in a and "taisu/images/00000.tgz" in a
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert differ == []


def test_two_names_on_one_ledger_share_every_data_file(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    seed(ledger, store)
    create_release(ledger, store, "x1", OPTIONS)
    create_release(ledger, store, "x2", OPTIONS)
    a = read_files(download_release(store, "x1", tmp_path / "x1"))
    b = read_files(download_release(store, "x2", tmp_path / "x2"))
    assert sorted(a) == sorted(b)
    # Only the files that name the release differ.
    assert {k for k in a if a[k] != b[k]} == {"manifest.json", "README.md", "SHA256SUMS"}
