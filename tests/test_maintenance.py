"""Orphan images: found against real ledgers (SQLite, Postgres) in real stores (local, S3 over HTTP)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taisu_etl import maintenance
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.maintenance import WrongLedgerError, find_orphan_objects, remove_orphan_objects
from taisu_etl.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from taisu_etl.storage.base import image_key
from tests.storage.conftest import make_s3_store, s3_server  # noqa: F401 (fixtures)
from tests.storage.support import S3Server

HOUR = timedelta(hours=1)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., S3ObjectStore] = request.getfixturevalue("make_s3_store")
    return make(versioning=True)


def _image(n: int) -> bytes:
    return f"image bytes {n}".encode() * 10


def _record(ledger: Ledger, n: int, key: str, sha256: str | None) -> None:
    """A sample whose stored image is `key` (as the fetch and ingest stages record it)."""
    fields = {"object_key": key, "sha256": sha256} if sha256 else {"object_key": key}
    ledger.add_samples([NewSample(caption=f"图片说明 {n}", source="test", url=f"http://example.com/{n}.jpg", fields=fields)])


def _versions(s3_server: S3Server, store: ObjectStore, key: str) -> int:  # noqa: F811
    assert isinstance(store, S3ObjectStore)
    client = s3_server.raw_client()
    return sum(1 for v in client.list_objects(store.bucket, prefix=key, include_version=True) if v.object_name == key)


class Layout:
    """What a store holds after a few runs: referenced, orphaned, recent and non-image objects."""

    def __init__(self, ledger: Ledger, store: ObjectStore) -> None:
        put = [store.put_image(_image(i)) for i in range(6)]
        self.referenced = [put[0].key, put[1].key]
        _record(ledger, 0, put[0].key, put[0].sha256)
        # Recorded with a sha256 that is not its key's: only the exact object_key check finds it.
        _record(ledger, 1, put[1].key, "0" * 64)
        self.odd = "images/imported/not-content-addressed.jpg"
        store.put(self.odd, b"odd")
        _record(ledger, 2, self.odd, None)
        self.orphans = {p.key: p.size for p in put[2:5]}
        store.put_image(_image(2), check_existing=False)  # a second version of an orphan (a versioned bucket keeps both)
        store.put(put[5].key, _image(5))  # written again, as a retried fetch does
        self.orphans[put[5].key] = put[5].size
        self.untouchable = ["releases/r1/manifest.json", "releases/broken/shard-00000.tar", "embeddings/m/shard-00000/0-9.npz"]
        for key in self.untouchable:
            store.put(key, b"not an image")
        time.sleep(1.5)  # S3 times have whole seconds: the cutoff falls strictly between old and new
        self.cutoff = datetime.now(UTC)
        time.sleep(1.5)
        recent = store.put_image(_image(99))  # an in-flight fetch: stored, its ledger row not yet written
        self.recent = recent.key

    def now(self) -> datetime:
        """A `now` that, with a grace period of an hour, puts the cutoff between the old and the recent objects."""
        return self.cutoff + HOUR


def test_finds_only_old_images_no_sample_names(ledger: Ledger, store: ObjectStore) -> None:
    layout = Layout(ledger, store)
    report = find_orphan_objects(ledger, store, min_age=HOUR, now=layout.now())
    assert sorted(report.keys) == sorted(layout.orphans)
    assert (report.orphans, report.orphan_bytes) == (len(layout.orphans), sum(layout.orphans.values()))
    assert (report.listed, report.referenced, report.recent) == (len(layout.orphans) + 3 + 1, 3, 1)
    assert report.dry_run and report.removed == report.removed_bytes == 0
    for key in [*layout.orphans, *layout.referenced, layout.odd, layout.recent, *layout.untouchable]:
        assert store.exists(key), key  # a dry run deletes nothing
    assert "would remove 4" in report.summary()


def test_removes_every_version_of_each_orphan_and_nothing_else(
    ledger: Ledger, store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    layout = Layout(ledger, store)
    report = remove_orphan_objects(ledger, store, min_age=HOUR, now=layout.now(), dry_run=False)
    assert (report.removed, report.removed_bytes, report.spared) == (len(layout.orphans), sum(layout.orphans.values()), 0)
    for key in layout.orphans:
        assert not store.exists(key), key
    for key in [*layout.referenced, layout.odd, layout.recent, *layout.untouchable]:
        assert store.exists(key), key
    if isinstance(store, S3ObjectStore):
        server = request.getfixturevalue("s3_server")
        assert report.versions_removed == len(layout.orphans) + 2  # the two orphans written twice had two versions
        assert all(_versions(server, store, key) == 0 for key in layout.orphans)
    else:
        assert report.versions_removed == len(layout.orphans)
    # A second sweep finds nothing more: the sweep is idempotent.
    again = remove_orphan_objects(ledger, store, min_age=HOUR, now=layout.now(), dry_run=False)
    assert (again.orphans, again.removed, again.referenced, again.recent) == (0, 0, 3, 1)


def test_an_orphan_recorded_or_rewritten_after_the_listing_is_spared(
    ledger: Ledger, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = Layout(ledger, store)
    recorded, rewritten, *_ = sorted(layout.orphans)
    exact = maintenance._referenced_exactly

    def then_writers_land(engine, keys):  # type: ignore[no-untyped-def]
        found = exact(engine, keys)
        # Between the check and the deletion: an ingest records one orphan (it found the object
        # already stored, so did not write it again) and a fetch stores the other again.
        _record(ledger, 50, recorded, recorded.rsplit("/", 1)[1].split(".")[0])
        time.sleep(1.1)
        store.put(rewritten, store.get(rewritten))
        return found

    monkeypatch.setattr(maintenance, "_referenced_exactly", then_writers_land)
    report = remove_orphan_objects(ledger, store, min_age=HOUR, now=layout.now(), dry_run=False)
    assert report.spared == 2 and report.removed == len(layout.orphans) - 2
    assert store.exists(recorded) and store.exists(rewritten)


def test_a_ledger_that_records_no_image_deletes_nothing(ledger: Ledger, store: ObjectStore) -> None:
    """The embedded default ledger pointed at a production bucket must not empty it."""
    keys = [store.put_image(_image(i)).key for i in range(3)]
    now = datetime.now(UTC) + 2 * HOUR
    assert find_orphan_objects(ledger, store, min_age=HOUR, now=now).orphans == 3
    with pytest.raises(WrongLedgerError, match="is this the ledger of this store"):
        remove_orphan_objects(ledger, store, min_age=HOUR, now=now, dry_run=False)
    assert all(store.exists(k) for k in keys)


def test_many_objects_are_checked_in_pages(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "LIST_PAGE", 7)
    monkeypatch.setattr(maintenance, "EXACT_CHECK", 5)
    store = LocalObjectStore(tmp_path / "objects")
    puts = [store.put_image(_image(i)) for i in range(40)]
    for i, p in enumerate(puts[::2]):
        _record(ledger, i, p.key, p.sha256)
    report = remove_orphan_objects(ledger, store, min_age=HOUR, now=datetime.now(UTC) + 2 * HOUR, dry_run=False)
    assert (report.listed, report.referenced, report.removed) == (40, 20, 20)
    assert {p.key for p in puts[::2]} == {i.key for i in store.list("images/")}


def test_grace_period_cannot_be_negative(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        find_orphan_objects(ledger, LocalObjectStore(tmp_path), min_age=-HOUR)


def test_content_addressed_keys_are_looked_up_by_their_digest() -> None:
    digest = hashlib.sha256(_image(1)).hexdigest()
    match = maintenance._IMAGE_KEY.fullmatch(image_key(digest, "png"))
    assert match is not None and match.group(1) == digest


def test_storage_orphans_command_lists_then_deletes(tmp_path: Path) -> None:
    # What a user runs: `taisu-etl storage orphans` lists, `--delete` removes, on embedded defaults.
    import os
    import subprocess
    import sys

    from taisu_etl.db.migrate import upgrade

    home = tmp_path / "var"
    ledger = Ledger.open(f"sqlite:///{home / 'ledger.db'}", require_schema=False)
    upgrade(ledger.engine)
    store = LocalObjectStore(home / "objects")
    kept, orphan = store.put_image(_image(1)), store.put_image(_image(2))
    _record(ledger, 1, kept.key, kept.sha256)
    ledger.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")} | {"TAISU_HOME": str(home)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "taisu_etl.cli", "storage", "orphans", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    listed = cli("--min-age-hours", "0")
    assert listed.returncode == 0, listed.stderr
    assert f"  {orphan.key}" in listed.stdout and kept.key not in listed.stdout and "would remove 1 " in listed.stdout
    assert store.exists(orphan.key)
    young = cli("--delete")  # both images are seconds old: the 6 h grace period spares them
    assert young.returncode == 0 and "removed 0 " in young.stdout and store.exists(orphan.key)
    deleted = cli("--delete", "--min-age-hours", "0")
    assert deleted.returncode == 0 and "removed 1 " in deleted.stdout, deleted.stdout + deleted.stderr
    assert not store.exists(orphan.key) and store.exists(kept.key)
