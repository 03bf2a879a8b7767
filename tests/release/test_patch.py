"""Release versions after a takedown: the patch (only affected shards rewritten), its crash safety and
locking, withdrawal, verify and diff of versions, and the build/takedown race."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import release, release_member, release_version, sample, takedown_request
from taisu_etl.release import ReleaseError, ReleaseExistsError, ReleaseNotFoundError, ReleaseOptions, create_release, diff_releases, verify_release
from taisu_etl.release import records
from taisu_etl.release.patch import PatchReport, patch_release, withdraw_release
from taisu_etl.storage import LocalObjectStore, ObjectStore

from .support import Seeded, sample_id_of, seed, take_down

SHARD = 8  # 31 eligible samples of seed(48): shards of 8, 8, 8 and 7
DATA_PREFIXES = ("taisu/", "webdataset/", "parquet/", "ids.txt")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def vstore(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A local folder, or a versioned S3 bucket (where old bytes could linger as noncurrent versions)."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., ObjectStore] = request.getfixturevalue("make_s3_store")
    return make(versioning=True)


# ------------------------------------------------------------------ helpers

def _manifest(store: ObjectStore, name: str) -> dict[str, Any]:
    return json.loads(store.get(f"releases/{name}/manifest.json"))


def _hashes(store: ObjectStore, name: str) -> dict[str, str]:
    """sha256 of the stored bytes of every file the manifest lists (not what the manifest says)."""
    return {f["path"]: hashlib.sha256(store.get(f"releases/{name}/{f['path']}")).hexdigest() for f in _manifest(store, name)["files"]}


def _ids(store: ObjectStore, name: str) -> list[str]:
    return store.get(f"releases/{name}/ids.txt").decode().split()


def _request(ledger: Ledger, url_id: str) -> int:
    with ledger.engine.begin() as conn:
        return int(conn.execute(
            sa.insert(takedown_request).values(requester="rights@example.com", kind="sample", value=url_id).returning(takedown_request.c.id)
        ).scalar_one())


def _shard_of(store: ObjectStore, name: str, url_id: str) -> str:
    return f"{_ids(store, name).index(url_id) // SHARD:05d}"


def _tar_stems(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return [m.name for m in tar]


def _row(ledger: Ledger, name: str) -> dict[str, Any]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(sa.select(release).where(release.c.name == name)).mappings().one())


def _removed_in(ledger: Ledger, release_id: int) -> dict[int, int]:
    m = release_member.c
    with ledger.engine.connect() as conn:
        return dict(conn.execute(sa.select(m.sample_id, m.removed_in_version).where(m.release_id == release_id,
                                                                                     m.removed_in_version.is_not(None))).all())


def _build(ledger: Ledger, store: ObjectStore, name: str = "p", **options: Any) -> Seeded:
    seeded = seed(ledger, store)
    create_release(ledger, store, name, ReleaseOptions(shard_size=SHARD, parent=None, **options))
    return seeded


# ------------------------------------------------------------------ the patch

def test_patch_rewrites_only_the_shard_that_held_the_sample(ledger: Ledger, vstore: ObjectStore, tmp_path: Path) -> None:
    store = vstore
    _build(ledger, store)
    v1 = store.get("releases/p/manifest.json")
    assert json.loads(v1)["version"] == 1 and json.loads(v1)["counts"]["taken_down"] == 0
    ids_v1 = _ids(store, "p")
    before = _hashes(store, "p")
    victim = ids_v1[SHARD + 3]  # in shard 00001
    shard = _shard_of(store, "p", victim)
    assert shard == "00001"
    sid = take_down(ledger, victim)
    req = _request(ledger, victim)
    lines: list[str] = []

    report = patch_release(ledger, store, "p", [sid, 10**9], takedown_id=req, progress=lines.append)  # no sample 10**9: ignored

    assert (report.from_version, report.to_version, report.removed_ids, report.shards_rewritten) == (1, 2, [victim], [shard])
    assert any(line.startswith("shard 00001: 8 -> 7 samples") for line in lines) and report.summary() in lines
    after = _hashes(store, "p")
    shard_files = {f"taisu/images/{shard}.tar", f"webdataset/{shard}.tar", f"parquet/{shard}.parquet"}
    lists = {"ids.txt", "removed.txt", "taisu/captions.json", "taisu/captions.jsonl", "taisu/captions.txt", "webdataset/sizes.json",
             "README.md", "SHA256SUMS"}
    for path, digest in before.items():
        if path in shard_files or path in lists:
            assert after[path] != digest, path
        elif not path.startswith("card/"):  # plots may or may not move with one sample less
            assert after[path] == digest, f"{path} changed though it holds no removed sample"
    assert set(after) == set(before) | {"history/v1/manifest.json", "history/v1/ids.txt"}
    assert store.get("releases/p/history/v1/manifest.json") == v1
    assert store.get("releases/p/history/v1/ids.txt").decode().split() == ids_v1
    # Every key the patch rewrote keeps one version: the old bytes are not recoverable.
    assert {k for k, _ in report.files_rewritten} >= {f"releases/p/{p}" for p in shard_files | lists | {"manifest.json"}}
    for key, _ in report.files_rewritten:
        assert len(store.versions(key)) == 1, key
    assert report.bytes_written > 0

    # The sample is gone from every format, and nothing else is.
    others = [i for i in ids_v1[SHARD:2 * SHARD] if i != victim]
    assert sorted({n.split(".")[0] for n in _tar_stems(store.get(f"releases/p/taisu/images/{shard}.tar"))}) == others
    assert sorted({n.split(".")[0] for n in _tar_stems(store.get(f"releases/p/webdataset/{shard}.tar"))}) == others
    local = tmp_path / "part.parquet"
    local.write_bytes(store.get(f"releases/p/parquet/{shard}.parquet"))
    assert pq.read_table(local).column("url_id").to_pylist() == others
    assert victim not in json.loads(store.get("releases/p/taisu/captions.json"))
    assert victim not in store.get("releases/p/taisu/captions.txt").decode()
    assert _ids(store, "p") == [i for i in ids_v1 if i != victim]
    assert store.get("releases/p/removed.txt").decode().split() == [victim]
    assert json.loads(store.get("releases/p/webdataset/sizes.json"))[f"{shard}.tar"] == SHARD - 1

    manifest = _manifest(store, "p")
    assert manifest["version"] == 2
    assert manifest["counts"]["samples"] == len(ids_v1) - 1 and manifest["counts"]["removed"] == 1 and manifest["counts"]["taken_down"] == 1
    assert manifest["history"] == [{
        "version": 2, "previous_manifest": "history/v1/manifest.json", "previous_manifest_sha256": hashlib.sha256(v1).hexdigest(),
        "previous_ids": "history/v1/ids.txt", "previous_samples": len(ids_v1), "removed": 1, "takedown_id": req,
    }]
    readme = store.get("releases/p/README.md").decode()
    assert "| version | 2 |" in readme and "## Versions" in readme and f"| 2 | `{hashlib.sha256(v1).hexdigest()[:16]}…` | 1 | {req} |" in readme

    # The ledger: the version, its row, the member's removal.
    row = _row(ledger, "p")
    assert (row["version"], row["state"], row["counts"]["samples"]) == (2, "published", len(ids_v1) - 1)
    assert _removed_in(ledger, row["id"]) == {sid: 2}
    with ledger.engine.connect() as conn:
        versions = conn.execute(sa.select(release_version.c.version, release_version.c.manifest_sha256, release_version.c.samples,
                                          release_version.c.takedown_id).where(release_version.c.release_id == row["id"])
                                .order_by(release_version.c.version)).all()
    v2 = store.get("releases/p/manifest.json")
    assert [tuple(v) for v in versions] == [(1, hashlib.sha256(v1).hexdigest(), len(ids_v1), None),
                                             (2, hashlib.sha256(v2).hexdigest(), len(ids_v1) - 1, req)]

    check = verify_release(store, "p", ledger=ledger)
    assert check.ok and check.version == 2, check.summary()
    d = diff_releases(store, "p@1", "p")
    assert (d.added, d.removed, d.removed_examples) == (0, 1, [victim])
    assert diff_releases(store, "p@2", "p").removed == 0

    # Again: nothing left to remove, nothing written.
    again = patch_release(ledger, store, "p", [sid], takedown_id=req)
    assert (again.from_version, again.to_version, again.removed_ids, again.files_rewritten) == (2, 2, [], [])
    assert store.get("releases/p/manifest.json") == v2 and _hashes(store, "p") == after


def test_a_patched_last_shard_is_what_a_fresh_build_writes(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    _build(sqlite_ledger, local_store)
    ids = _ids(local_store, "p")
    victim = ids[-2]  # in the last shard: a fresh build shards everything before it the same way
    patch_release(sqlite_ledger, local_store, "p", [take_down(sqlite_ledger, victim)])
    create_release(sqlite_ledger, local_store, "fresh", ReleaseOptions(shard_size=SHARD, parent=None))
    patched, fresh = _hashes(local_store, "p"), _hashes(local_store, "fresh")
    data = [p for p in fresh if p.startswith(DATA_PREFIXES) or p.startswith("card/")]
    assert len(data) > 12
    assert {p: patched[p] for p in data} == {p: fresh[p] for p in data}


def test_patch_of_a_tgz_release_with_some_formats(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    _build(sqlite_ledger, local_store, formats=("taisu", "parquet"), tgz=True)
    ids = _ids(local_store, "p")
    victims = [ids[1], ids[2], ids[20]]
    report = patch_release(sqlite_ledger, local_store, "p", [take_down(sqlite_ledger, v) for v in victims])
    assert report.shards_rewritten == ["00000", "00002"] and report.removed_ids == sorted(victims)
    assert sorted(n[:-4] for n in _tar_stems(local_store.get("releases/p/taisu/images/00000.tgz"))) == [i for i in ids[:SHARD] if i not in victims]
    assert verify_release(local_store, "p", ledger=sqlite_ledger).ok
    # A second takedown makes version 3; removed.txt keeps everything ever removed.
    more = ids[-1]
    report = patch_release(sqlite_ledger, local_store, "p", [take_down(sqlite_ledger, more)])
    assert (report.from_version, report.to_version, report.shards_rewritten) == (2, 3, ["00003"])
    assert local_store.get("releases/p/removed.txt").decode().split() == sorted([*victims, more])
    manifest = _manifest(local_store, "p")
    assert [h["version"] for h in manifest["history"]] == [2, 3] and manifest["counts"]["taken_down"] == 4
    assert {"history/v1/ids.txt", "history/v2/ids.txt", "history/v2/manifest.json"} <= {f["path"] for f in manifest["files"]}
    assert verify_release(local_store, "p", ledger=sqlite_ledger).ok
    assert diff_releases(local_store, "p@1", "p").removed_examples == sorted([*victims, more])
    assert diff_releases(local_store, "p@2", "p@3").removed_examples == [more]
    with pytest.raises(ReleaseNotFoundError, match="no version 4"):
        diff_releases(local_store, "p@4", "p")
    with pytest.raises(ReleaseError, match="bad release version"):
        diff_releases(local_store, "p@0", "p")


def test_patch_refuses_what_it_cannot_patch(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    with pytest.raises(ReleaseNotFoundError, match="not in the ledger"):
        patch_release(sqlite_ledger, local_store, "nope", [1])
    seeded = _build(sqlite_ledger, local_store)
    # A sample that is not a member (rejected) is ignored.
    rejected = sample_id_of(sqlite_ledger, sorted(seeded.rejected)[0])
    report = patch_release(sqlite_ledger, local_store, "p", [rejected])
    assert (report.from_version, report.to_version) == (1, 1) and "nothing to patch" in report.summary()
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.update(release).where(release.c.name == "p").values(state="staging"))
    with pytest.raises(ReleaseError, match="is staging, not published"):
        patch_release(sqlite_ledger, local_store, "p", [rejected])


# ------------------------------------------------------------------ crash safety

def test_crash_between_the_manifest_and_the_ledger_then_a_rerun_records_it(ledger: Ledger, local_store: LocalObjectStore,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _build(ledger, local_store)
    victim = _ids(local_store, "p")[5]
    sid = take_down(ledger, victim)
    req = _request(ledger, victim)

    def die(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(records, "commit_patch", die)
    with pytest.raises(KeyboardInterrupt):
        patch_release(ledger, local_store, "p", [sid], takedown_id=req)
    monkeypatch.undo()
    assert _manifest(local_store, "p")["version"] == 2 and _row(ledger, "p")["version"] == 1
    # Ledger and store disagree: verify says so.
    assert any(p.what == "version differs from the ledger's" for p in verify_release(local_store, "p", ledger=ledger).problems)

    report = patch_release(ledger, local_store, "p", [])  # any re-run finishes it, with no ids at all
    assert (report.from_version, report.to_version, report.removed_ids) == (1, 2, [victim])
    row = _row(ledger, "p")
    assert row["version"] == 2 and _removed_in(ledger, row["id"]) == {sid: 2}
    assert [v["takedown_id"] for v in records.versions(ledger.engine, row["id"])] == [None, req]
    assert not local_store.exists("releases/p/history/v2.pending")
    assert verify_release(local_store, "p", ledger=ledger).ok


@pytest.mark.parametrize("store_kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_crash_mid_rewrite_then_another_takedown_finishes_both(store_kind: str, sqlite_ledger: Ledger, tmp_path: Path,
                                                               request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    store: ObjectStore = LocalObjectStore(tmp_path / "o") if store_kind == "local" else request.getfixturevalue("make_s3_store")(versioning=True)
    _build(sqlite_ledger, store)
    ids = _ids(store, "p")
    first, second = ids[3], ids[-3]
    real_put_file = type(store).put_file
    calls = {"n": 0}

    def flaky(self, key, path, content_type=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 3:  # history ids, then two files of shard 00000 rewritten, then the crash
            raise OSError("network gone")
        return real_put_file(self, key, path, content_type)

    monkeypatch.setattr(type(store), "put_file", flaky)
    with pytest.raises(OSError, match="network gone"):
        patch_release(sqlite_ledger, store, "p", [take_down(sqlite_ledger, first)])
    monkeypatch.undo()
    assert first not in {n.split(".")[0] for n in _tar_stems(store.get("releases/p/taisu/images/00000.tar"))}  # half-way...
    assert _manifest(store, "p")["version"] == 1 and store.exists("releases/p/history/v2.pending")
    assert not verify_release(store, "p", ledger=sqlite_ledger).ok  # ...and verify says so

    # The next takedown names only its own sample; the patch still finishes the first one's removal.
    report = patch_release(sqlite_ledger, store, "p", [take_down(sqlite_ledger, second)])
    assert (report.from_version, report.to_version, report.removed_ids) == (1, 2, sorted([first, second]))
    assert sorted(report.shards_rewritten) == ["00000", "00003"]
    assert _ids(store, "p") == [i for i in ids if i not in (first, second)]
    for shard in ("00000", "00003"):
        for path in (f"taisu/images/{shard}.tar", f"webdataset/{shard}.tar"):
            stems = {n.split(".")[0] for n in _tar_stems(store.get(f"releases/p/{path}"))}
            assert not stems & {first, second}
            assert len(store.versions(f"releases/p/{path}")) == 1
    assert store.get("releases/p/history/v1/ids.txt").decode().split() == ids
    assert not store.exists("releases/p/history/v2.pending")
    assert verify_release(store, "p", ledger=sqlite_ledger).ok


def test_two_patches_of_one_release_take_turns(ledger: Ledger, local_store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import taisu_etl.release.patch as patch_module

    _build(ledger, local_store)
    ids = _ids(local_store, "p")
    a, b = take_down(ledger, ids[2]), take_down(ledger, ids[12])
    second_waits = threading.Event()
    real = patch_module._Patch._write_plan

    def slow_plan(self):  # type: ignore[no-untyped-def]
        real(self)
        if self.version == 1:  # the first patch, holding the lock, lets the second one try
            threading.Thread(target=run_second, daemon=True).start()
            assert second_waits.wait(30), "the second patch did not wait for the first"

    results: dict[str, PatchReport] = {}
    errors: list[BaseException] = []

    def run_second() -> None:
        def say(line: str) -> None:
            if "waiting for another patch" in line:
                second_waits.set()
        try:
            results["second"] = patch_release(ledger, local_store, "p", [b], progress=say)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            second_waits.set()

    monkeypatch.setattr(patch_module._Patch, "_write_plan", slow_plan)
    results["first"] = patch_release(ledger, local_store, "p", [a])
    deadline = time.monotonic() + 60
    while "second" not in results and not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not errors, errors
    assert (results["first"].from_version, results["first"].to_version) == (1, 2)
    assert (results["second"].from_version, results["second"].to_version) == (2, 3)
    assert verify_release(local_store, "p", ledger=ledger).ok
    assert local_store.get("releases/p/removed.txt").decode().split() == sorted([ids[2], ids[12]])


# ------------------------------------------------------------------ verify against the ledger's members

def test_verify_compares_ids_with_the_ledgers_members(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    _build(sqlite_ledger, local_store)
    ids = _ids(local_store, "p")
    sid = take_down(sqlite_ledger, ids[4])
    patch_release(sqlite_ledger, local_store, "p", [sid])
    rid = _row(sqlite_ledger, "p")["id"]
    m = release_member.c
    with sqlite_ledger.engine.begin() as conn:  # the ledger "forgets" the removal
        conn.execute(sa.update(release_member).where(m.release_id == rid, m.sample_id == sid).values(removed_in_version=None))
    problems = [str(p) for p in verify_release(local_store, "p", ledger=sqlite_ledger).problems]
    assert f"ids.txt: 1 current members in the ledger are missing from it: {ids[4]}" in problems
    assert any("differ in number from the manifest" in p for p in problems)
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.delete(release_member).where(m.release_id == rid))
    problems = [str(p) for p in verify_release(local_store, "p", ledger=sqlite_ledger).problems]
    assert any("the ledger records no current member" in p for p in problems)
    assert any(p.startswith(f"ids.txt: {len(ids) - 1} ids in it are not current members in the ledger: {ids[0]}, ") for p in problems)


# ------------------------------------------------------------------ withdrawal

def test_withdraw_deletes_every_version_of_every_object(sqlite_ledger: Ledger, vstore: ObjectStore,
                                                        request: pytest.FixtureRequest) -> None:
    store = vstore
    _build(sqlite_ledger, store)
    patch_release(sqlite_ledger, store, "p", [take_down(sqlite_ledger, _ids(store, "p")[9])])
    keys = [info.key for info in store.list("releases/p/")]
    assert "releases/p/history/v1/ids.txt" in keys

    report = withdraw_release(sqlite_ledger, store, "p", takedown_id=None)
    assert report.deleted[0][0] == "releases/p/manifest.json"  # first: the release stops existing at once
    assert {k for k, _ in report.deleted} == set(keys) and not report.already_withdrawn
    assert not list(store.list("releases/p/"))
    assert all(store.versions(k) == [] for k in keys)
    if hasattr(store, "bucket"):  # nothing at all under the prefix, delete markers included
        client = request.getfixturevalue("s3_server").raw_client()
        assert not list(client.list_objects(store.bucket, prefix="releases/p/", recursive=True, include_version=True))
    row = _row(sqlite_ledger, "p")
    assert row["state"] == "withdrawn" and row["withdrawn_at"] is not None

    check = verify_release(store, "p", ledger=sqlite_ledger)
    assert check.withdrawn and not check.ok and "was withdrawn" in check.summary()
    again = withdraw_release(sqlite_ledger, store, "p")
    assert again.already_withdrawn and again.deleted == []
    assert patch_release(sqlite_ledger, store, "p", [1]).withdrawn
    with pytest.raises(ReleaseExistsError, match="withdrawn"):
        create_release(sqlite_ledger, store, "p", ReleaseOptions())


def test_cli_withdraw_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from taisu_etl.config import load_settings
    from taisu_etl.db.engine import make_engine
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.errors import TaisuError
    from taisu_etl.release.cli import release_app
    from taisu_etl.services import open_ledger, open_store

    for k in [k for k in __import__("os").environ if k.startswith("TAISU_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "home"))
    settings = load_settings()
    upgrade(make_engine(settings.ledger_url))
    led = open_ledger(settings)
    store = open_store(settings)
    seed(led, store, 30)
    runner = CliRunner()
    assert runner.invoke(release_app, ["create", "w1", "--shard-size", "4"]).exit_code == 0
    victim = _ids(store, "w1")[0]
    patch_release(led, store, "w1", [take_down(led, victim)])
    res = runner.invoke(release_app, ["list"])
    assert re.search(r"w1\s+published\s+2\s", res.output), res.output
    res = runner.invoke(release_app, ["diff", "w1@1", "w1", "--ids"])
    assert res.exit_code == 0 and res.output.split() == [f"-{victim}"], res.output
    res = runner.invoke(release_app, ["withdraw", "w1"])
    assert res.exit_code == 0 and "nothing done: add --yes" in res.output and store.exists("releases/w1/manifest.json")
    res = runner.invoke(release_app, ["withdraw", "w1", "--yes"])
    assert res.exit_code == 0 and "objects deleted" in res.output and not store.exists("releases/w1/manifest.json")
    res = runner.invoke(release_app, ["list"])
    assert re.search(r"w1\s+withdrawn\s+2\s.*absent \(withdrawn ", res.output), res.output
    res = runner.invoke(release_app, ["verify", "w1"])
    assert isinstance(res.exception, TaisuError) and "was withdrawn" in str(res.exception)
    led.dispose()


# ------------------------------------------------------------------ the build/takedown race

def _takedown_like_the_lead(ledger: Ledger, store: ObjectStore, url_id: str, seen: dict[str, Any], marked: threading.Event) -> None:
    """A takedown as the takedown processing runs it: mark the sample, then decide under the release row lock."""
    sid = take_down(ledger, url_id)
    marked.set()
    rid = _row(ledger, "race")["id"]
    with ledger.engine.begin() as conn:
        row = records.lock_for_patch(conn, rid)
        assert row is not None
        seen["state"] = row["state"]
    if seen["state"] == "published":
        seen["patch"] = patch_release(ledger, store, "race", [sid])


def _wait_for_lock_waiter(ledger: Ledger) -> None:
    """Postgres: until another session waits for a lock (the takedown, on the release row)."""
    deadline = time.monotonic() + 30
    with ledger.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the takedown never waited for the release row lock")


def test_takedown_before_the_builds_check_fails_the_build(ledger: Ledger, local_store: LocalObjectStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import taisu_etl.release.build as build

    seeded = seed(ledger, local_store)
    victim = sorted(seeded.eligible)[3]
    seen: dict[str, Any] = {}
    real_commit = build._commit

    def takedown_then_commit(*args: Any, **kwargs: Any) -> str:
        worker = threading.Thread(target=_takedown_like_the_lead, args=(ledger, local_store, victim, seen, threading.Event()))
        worker.start()
        worker.join(60)
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(build, "_commit", takedown_then_commit)
    with pytest.raises(ReleaseError, match="taken down or blocklisted while it was being built: run it again"):
        create_release(ledger, local_store, "race", ReleaseOptions(shard_size=SHARD, parent=None))
    assert seen == {"state": "staging"}  # the takedown left it to the build, which refused
    assert not local_store.exists("releases/race/manifest.json") and _row(ledger, "race")["state"] == "failed"
    monkeypatch.undo()
    create_release(ledger, local_store, "race", ReleaseOptions(shard_size=SHARD, parent=None))
    assert victim not in _ids(local_store, "race") and verify_release(local_store, "race", ledger=ledger).ok


def test_takedown_after_the_builds_check_patches_the_published_release(ledger: Ledger, local_store: LocalObjectStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = seed(ledger, local_store)
    victim = sorted(seeded.eligible)[3]
    seen: dict[str, Any] = {}
    marked = threading.Event()
    workers: list[threading.Thread] = []
    real_publish = records.publish

    def publish_during_a_takedown(conn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The check has passed and the build holds the row lock: now the takedown comes.
        worker = threading.Thread(target=_takedown_like_the_lead, args=(ledger, local_store, victim, seen, marked))
        worker.start()
        workers.append(worker)
        if ledger.is_postgres:
            assert marked.wait(30)  # the sample is taken down (committed) before the build publishes...
            _wait_for_lock_waiter(ledger)  # ...and the takedown now waits for the release row
        return real_publish(conn, *args, **kwargs)

    monkeypatch.setattr(records, "publish", publish_during_a_takedown)
    create_release(ledger, local_store, "race", ReleaseOptions(shard_size=SHARD, parent=None))
    workers[0].join(120)
    assert not workers[0].is_alive()
    assert seen["state"] == "published" and seen["patch"].to_version == 2  # it found the release published and patched it
    assert victim not in _ids(local_store, "race") and verify_release(local_store, "race", ledger=ledger).ok
    assert diff_releases(local_store, "race@1", "race").removed_examples == [victim]
