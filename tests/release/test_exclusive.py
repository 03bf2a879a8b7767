"""One run at a time creates a release (issue 18): a second run of the same name is refused while the
first builds, a dead or silent owner is taken over, a run that was taken over publishes nothing; the
build folder lives under the given workdir and killed runs' folders are cleaned; verify checks files,
manifest, members and takedowns against each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa

from taisu_etl.db.engine import make_engine
from taisu_etl.db.leases import LeaseOwner
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.migrate import upgrade
from taisu_etl.db.schema import release, release_member, release_version, sample
from taisu_etl.release import ReleaseOptions, create_release, records, verify_release
from taisu_etl.release.build import ReleaseReport
from taisu_etl.release.claim import ReleaseClaim
from taisu_etl.release.errors import ReleaseBusyError, ReleaseTakenOverError
from taisu_etl.release.patch import patch_release
from taisu_etl.release.workspace import OWNER_FILE, PREFIX, remove_stale
from taisu_etl.storage import LocalObjectStore, ObjectStore

from tests.conftest import migrated_ledger_url

from .support import seed, take_down

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ReleaseOptions(shard_size=3, parent=None)
OTHER_NODE = "release.0badc0de@another-node:4242:0a0b0c0d.123456"  # a token this machine cannot judge: liveness unknown


def _open_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., ObjectStore] = request.getfixturevalue("make_s3_store")
    return make()


def _row(ledger: Ledger, name: str) -> dict[str, Any]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(sa.select(release).where(release.c.name == name)).mappings().one())


def _manifest(store: ObjectStore, name: str) -> dict[str, Any]:
    return json.loads(store.get(f"releases/{name}/manifest.json"))


def _assert_published_whole(ledger: Ledger, store: ObjectStore, name: str) -> None:
    report = verify_release(store, name, ledger=ledger)
    assert report.ok, report.summary()
    row = _row(ledger, name)
    samples = _manifest(store, name)["counts"]["samples"]
    assert row["state"] == "published" and samples > 0
    assert records.member_count(ledger.engine, row["id"]) == samples == len(store.get(f"releases/{name}/ids.txt").decode().split())


# ------------------------------------------------------------------ two runs of one name

CASES = [
    ("local", "sqlite", 0.0), ("local", "sqlite", 0.5), ("local", "sqlite", 2.0), ("local", "sqlite", 6.0),
    pytest.param("s3", "sqlite", 0.5, marks=pytest.mark.s3),
    pytest.param("local", "postgres", 0.0, marks=pytest.mark.postgres),
    pytest.param("local", "postgres", 2.0, marks=pytest.mark.postgres),
    pytest.param("s3", "postgres", 0.0, marks=[pytest.mark.s3, pytest.mark.postgres]),
]


@pytest.mark.parametrize(("store_kind", "ledger_kind", "offset"), CASES)
def test_second_run_is_refused_while_the_first_builds(store_kind: str, ledger_kind: str, offset: float, request: pytest.FixtureRequest,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `release create` of one name, the second started `offset` s after the first: whichever claims
    the name builds and publishes, the other is refused with the owner's name, and touches nothing."""
    import taisu_etl.release.build as build

    url = migrated_ledger_url(ledger_kind, request, tmp_path)
    store = _open_store(store_kind, request, tmp_path)
    setup = Ledger.open(url, shards=4, recipe_version="test")
    seed(setup, store, 20)
    done = {"a": threading.Event(), "b": threading.Event()}
    real = build._finish_shard

    def hold_until_the_other_ends(*args: Any, **kwargs: Any) -> None:
        # The winner waits after its first shard (files uploaded, members being written) until the
        # other run has given up: the two runs overlap at whatever offset the second one starts.
        real(*args, **kwargs)
        me = threading.current_thread().name
        assert done["b" if me == "a" else "a"].wait(60)

    monkeypatch.setattr(build, "_finish_shard", hold_until_the_other_ends)
    results: dict[str, Any] = {}

    def run(me: str) -> None:
        led = Ledger.open(url, shards=4, recipe_version="test")  # its own engine, like a separate process
        try:
            results[me] = create_release(led, store, "twin", OPTIONS, workdir=tmp_path / "work", stale_after=60)
        except Exception as exc:
            results[me] = exc
        finally:
            done[me].set()
            led.dispose()

    threads = {me: threading.Thread(target=run, args=(me,), name=me) for me in ("a", "b")}
    threads["a"].start()
    time.sleep(offset)
    threads["b"].start()
    for t in threads.values():
        t.join(120)
        assert not t.is_alive()
    published = [r for r in results.values() if isinstance(r, ReleaseReport)]
    refused = [r for r in results.values() if isinstance(r, ReleaseBusyError)]
    assert len(published) == 1 and len(refused) == 1, results
    assert str(refused[0]).startswith(f"release twin is being created by release@{LeaseOwner.current('x').host}:{os.getpid()} ")
    assert " since 20" in str(refused[0])
    _assert_published_whole(setup, store, "twin")
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith(PREFIX)]
    setup.dispose()


@pytest.mark.postgres
def test_simultaneous_first_claims_are_one_claim_and_one_refusal(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Postgres: both runs find no row and insert; the unique name makes the second insert wait and then
    fail, which must become the "being created by" refusal, not an IntegrityError."""
    url = migrated_ledger_url("postgres", request, tmp_path)
    engine = make_engine(url)
    first = LeaseOwner.current("release.first")
    outcome: dict[str, Any] = {}
    with engine.connect() as conn:
        conn.begin()
        conn.execute(sa.insert(release).values(name="same", state="staging", owner=first.token, owner_since=sa.func.now(),
                                               heartbeat_at=sa.func.now()))

        def second() -> None:
            try:
                outcome["id"] = records.start(engine, "same", None, {}, LeaseOwner.current("release.second"), stale_after=60)
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=second)
        worker.start()
        deadline = time.monotonic() + 30
        with engine.connect() as watch:  # until the second insert waits on the first one's uncommitted name
            while not watch.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                            "AND wait_event_type = 'Lock'")).scalar_one():
                watch.rollback()
                assert time.monotonic() < deadline, "the second claim never waited for the first"
                time.sleep(0.02)
        conn.commit()
    worker.join(30)
    assert isinstance(outcome.get("error"), ReleaseBusyError), outcome
    assert "release same is being created by release@" in str(outcome["error"])
    engine.dispose()


# ------------------------------------------------------------------ dead and silent owners

_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import taisu_etl.release.build as build
    from taisu_etl.db.ledger import Ledger
    from taisu_etl.release.options import ReleaseOptions
    from taisu_etl.storage import LocalObjectStore

    url, objects, workdir = sys.argv[1:4]
    real = build._finish_shard

    def finish_then_hang(*args, **kwargs):
        real(*args, **kwargs)
        print("shard done", flush=True)
        time.sleep(120)  # killed here

    build._finish_shard = finish_then_hang
    led = Ledger.open(url, shards=4, recipe_version="test")
    build.create_release(led, LocalObjectStore(objects), "crash", ReleaseOptions(shard_size=3, parent=None), workdir=workdir)
""")


@pytest.mark.parametrize("ledger_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_sigkilled_runs_claim_files_and_build_folder_are_taken_over(ledger_kind: str, request: pytest.FixtureRequest,
                                                                      tmp_path: Path) -> None:
    url = migrated_ledger_url(ledger_kind, request, tmp_path)
    store = LocalObjectStore(tmp_path / "objects")
    led = Ledger.open(url, shards=4, recipe_version="test")
    seed(led, store, 20)
    work = tmp_path / "var" / "tmp"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, url, str(tmp_path / "objects"), str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # the first shard is written and being uploaded
        assert line.strip() == "shard done", proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 30
        while not any(True for _ in store.list("releases/crash/")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    row = _row(led, "crash")
    assert row["state"] == "staging" and LeaseOwner.parse(row["owner"]).pid == proc.pid
    assert LeaseOwner.parse(row["owner"]).is_dead()
    left = [p for p in work.iterdir() if p.name.startswith(f"{PREFIX}crash-")]
    assert len(left) == 1 and (left[0] / OWNER_FILE).read_text().strip() == row["owner"]

    said: list[str] = []
    create_release(led, store, "crash", OPTIONS, workdir=work, progress=said.append)  # no wait: the owner is provably dead
    _assert_published_whole(led, store, "crash")
    assert any(f"removed 1 build folder(s) that killed release runs left in {work}: {left[0].name}" == s for s in said), said
    assert any(s.startswith("removed ") and "files an earlier, unfinished run of crash left behind" in s for s in said), said
    assert not [p for p in work.iterdir() if p.name.startswith(PREFIX)]
    assert _row(led, "crash")["owner"] != row["owner"]
    led.dispose()


def _stage_claim(ledger: Ledger, name: str, owner: str, heartbeat_age: float) -> None:
    """A staging row as a run of another node leaves it: its owner token and its last heartbeat."""
    beat = datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age)
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(release).values(name=name, state="staging", owner=owner, owner_since=beat - timedelta(seconds=5),
                                               heartbeat_at=beat))


def test_another_nodes_owner_is_waited_for_until_its_heartbeat_is_stale(ledger: Ledger, local_store: LocalObjectStore) -> None:
    seed(ledger, local_store, 20)
    _stage_claim(ledger, "far", OTHER_NODE, heartbeat_age=3)
    with pytest.raises(ReleaseBusyError, match=r"^release far is being created by release@another-node:4242 since .* \(last heartbeat \d+ s ago\)"):
        create_release(ledger, local_store, "far", OPTIONS, stale_after=60)
    assert _row(ledger, "far")["owner"] == OTHER_NODE
    # Silent for longer than the timeout: that run is gone as far as anyone can tell.
    create_release(ledger, local_store, "far", OPTIONS, stale_after=2)
    _assert_published_whole(ledger, local_store, "far")


def test_a_live_owner_on_this_node_is_never_taken_over(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    """Alive here (this very process): refused even though its heartbeat is old."""
    seed(sqlite_ledger, local_store, 20)
    _stage_claim(sqlite_ledger, "here", LeaseOwner.current("release.1234abcd").token, heartbeat_age=3600)
    with pytest.raises(ReleaseBusyError, match=f"is being created by release@.*:{os.getpid()} "):
        create_release(sqlite_ledger, local_store, "here", OPTIONS, stale_after=2)


def test_a_run_that_was_taken_over_does_not_publish(ledger: Ledger, local_store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thought dead (silent too long), the run is taken over; when it reaches its publish it finds
    another owner, publishes nothing and leaves the new owner's row as it is."""
    import taisu_etl.release.build as build

    seed(ledger, local_store, 20)
    real_commit = build._commit

    def taken_over_then_commit(*args: Any, **kwargs: Any) -> str:
        with ledger.engine.begin() as conn:  # what records.start does for the run of another node
            conn.execute(sa.update(release).where(release.c.name == "slow").values(owner=OTHER_NODE, heartbeat_at=sa.func.now()))
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(build, "_commit", taken_over_then_commit)
    with pytest.raises(ReleaseTakenOverError, match=r"^release slow was taken over by release@another-node:4242 since .*nothing was published"):
        create_release(ledger, local_store, "slow", OPTIONS, stale_after=600)
    assert not local_store.exists("releases/slow/manifest.json")
    row = _row(ledger, "slow")
    assert (row["state"], row["owner"]) == ("staging", OTHER_NODE)


def test_the_heartbeat_notices_a_takeover_and_stops_the_build(sqlite_ledger: Ledger, local_store: LocalObjectStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import taisu_etl.release.build as build

    seed(sqlite_ledger, local_store, 20)
    real = build._finish_shard
    calls = {"n": 0}

    def finish_then_lose_the_claim(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            with sqlite_ledger.engine.begin() as conn:
                conn.execute(sa.update(release).where(release.c.name == "beat").values(owner=OTHER_NODE))
            time.sleep(0.6)  # two heartbeats at stale_after=1

    monkeypatch.setattr(build, "_finish_shard", finish_then_lose_the_claim)
    with pytest.raises(ReleaseTakenOverError, match="claim was taken over by another run"):
        create_release(sqlite_ledger, local_store, "beat", OPTIONS, stale_after=1)
    assert calls["n"] == 1  # stopped at the next shard, not at the publish
    assert not local_store.exists("releases/beat/manifest.json") and _row(sqlite_ledger, "beat")["owner"] == OTHER_NODE


def test_a_run_cut_off_from_the_ledger_stops_writing(sqlite_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unrenewed for half the timeout, a run stops before anyone may take it over."""
    claim = ReleaseClaim.acquire(sqlite_ledger.engine, "cut", None, {}, stale_after=0.4)
    try:
        claim.check()

        def unreachable(*args: Any, **kwargs: Any) -> bool:
            raise sa.exc.OperationalError("UPDATE release", {}, Exception("server closed the connection"))

        monkeypatch.setattr(records, "heartbeat", unreachable)
        time.sleep(0.5)
        with pytest.raises(ReleaseTakenOverError, match="could not renew its claim in the ledger"):
            claim.check()
    finally:
        claim.close()


def test_a_failed_run_does_not_fail_its_successor(sqlite_ledger: Ledger) -> None:
    engine = sqlite_ledger.engine
    first = LeaseOwner.current("release.aaaa0001")
    rid = records.start(engine, "succ", None, {}, first, stale_after=60)
    with engine.begin() as conn:
        conn.execute(sa.update(release).where(release.c.id == rid).values(owner=OTHER_NODE))
    records.fail(engine, rid, first.token)
    assert (_row(sqlite_ledger, "succ")["state"], _row(sqlite_ledger, "succ")["owner"]) == ("staging", OTHER_NODE)
    with pytest.raises(ReleaseTakenOverError):
        records.add_members(engine, rid, [], owner=first.token, name="succ")


# ------------------------------------------------------------------ build folders

def test_build_folders_of_dead_owners_are_removed_and_others_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["sleep", "30"])
    dead_token = LeaseOwner.current("release.dead0001", pid=gone.pid).token
    gone.kill()
    gone.wait()
    folders = {
        "dead": dead_token, "alive": LeaseOwner.current("release.live0001").token, "elsewhere": OTHER_NODE, "unowned-new": None,
        "unowned-old": None,
    }
    for label, token in folders.items():
        folder = tmp_path / f"{PREFIX}r-{label}"
        folder.mkdir()
        (folder / "taisu-00000").write_bytes(b"partial")
        if token:
            (folder / OWNER_FILE).write_text(token + "\n")
    old = time.time() - 3 * 24 * 3600
    os.utime(tmp_path / f"{PREFIX}r-unowned-old", (old, old))
    (tmp_path / "not-a-build").mkdir()
    removed = remove_stale(tmp_path)
    assert sorted(p.name for p in removed) == [f"{PREFIX}r-dead", f"{PREFIX}r-unowned-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["not-a-build", *(f"{PREFIX}r-{k}" for k in ("alive", "elsewhere", "unowned-new"))])


def test_cli_builds_under_the_home_and_refuses_a_second_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`release create` builds in <TAISU home>/tmp; while a live run holds the name, a second
    `taisu-etl release create` prints one `error:` line naming it and exits 2."""
    import taisu_etl.release.build as build
    from taisu_etl.config import load_settings
    from taisu_etl.release.cli import release_app
    from taisu_etl.services import open_ledger, open_store
    from typer.testing import CliRunner

    for k in [k for k in os.environ if k.startswith("TAISU_")]:
        monkeypatch.delenv(k)
    home = tmp_path / "home"
    monkeypatch.setenv("TAISU_HOME", str(home))
    settings = load_settings()
    upgrade(make_engine(settings.ledger_url))
    led = open_ledger(settings)
    seed(led, open_store(settings), 20)
    folders: list[Path] = []
    real = build.build_folder

    def recorded(*args: Any, **kwargs: Any) -> Any:
        cm = real(*args, **kwargs)
        folder = cm.__enter__()
        folders.append(folder)
        return _Entered(cm, folder)

    monkeypatch.setattr(build, "build_folder", recorded)
    res = CliRunner().invoke(release_app, ["create", "c1", "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    assert len(folders) == 1 and folders[0].parent == home / "tmp" and folders[0].name.startswith(f"{PREFIX}c1-")
    assert not folders[0].exists()

    holder = LeaseOwner.current("release.cafe0001")  # this test process: alive, on this node
    _stage_claim(led, "c2", holder.token, heartbeat_age=1)
    res = CliRunner().invoke(release_app, ["list"])
    assert f"being created by release@{holder.host}:{os.getpid()}" in res.output, res.output
    res = CliRunner().invoke(release_app, ["verify", "c2"])
    assert f"(no releases/c2/manifest.json): it is being created by release@{holder.host}:{os.getpid()}" in str(res.exception)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")} | {"TAISU_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "taisu_etl.cli", "release", "create", "c2"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: release c2 is being created by release@{holder.host}:{os.getpid()} "), lines
    assert "Traceback" not in done.stderr
    assert _row(led, "c2")["owner"] == holder.token
    led.dispose()


class _Entered:
    """A context manager already entered (so the test can see the folder), exited by the build."""

    def __init__(self, cm: Any, value: Any) -> None:
        self.cm, self.value = cm, value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: Any) -> Any:
        return self.cm.__exit__(*exc)


# ------------------------------------------------------------------ verify: files, manifest, members, takedowns

def _problems(ledger: Ledger, store: ObjectStore, name: str) -> list[str]:
    return [str(p) for p in verify_release(store, name, ledger=ledger).problems]


def test_verify_finds_a_taken_down_member_the_files_no_longer_list(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    """The patch rewrote the files but the ledger lost the removal: the sample is still a current
    member while taken down; ids.txt cannot show it, the ledger's members do."""
    seed(sqlite_ledger, local_store, 20)
    create_release(sqlite_ledger, local_store, "v", OPTIONS)
    victim = local_store.get("releases/v/ids.txt").decode().split()[2]
    sid = take_down(sqlite_ledger, victim)
    patch_release(sqlite_ledger, local_store, "v", [sid])
    assert verify_release(local_store, "v", ledger=sqlite_ledger).ok
    m = release_member.c
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.update(release_member).where(m.sample_id == sid).values(removed_in_version=None))
    problems = _problems(sqlite_ledger, local_store, "v")
    assert any(p.startswith(f"release_member: 1 current members in the ledger are taken down or blocklisted (and not in ids.txt): "
                            f"{victim} (ledger id {sid}, taken down)") for p in problems), problems


def test_verify_checks_takedowns_even_when_the_members_are_lost(ledger: Ledger, local_store: LocalObjectStore) -> None:
    """A published release with no release_member rows: reported, and its ids are still checked against takedowns."""
    seed(ledger, local_store, 20)
    create_release(ledger, local_store, "v", OPTIONS)
    rid = _row(ledger, "v")["id"]
    victim = local_store.get("releases/v/ids.txt").decode().split()[0]
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(release_member).where(release_member.c.release_id == rid))
    take_down(ledger, victim)
    problems = _problems(ledger, local_store, "v")
    assert any(p.startswith("release_member: the ledger records no current member of the release") for p in problems), problems
    assert any(p.startswith(f"ids.txt: sample {victim} (ledger id ") and "is taken down but in the release" in p for p in problems), problems


def test_verify_compares_the_members_per_shard_and_the_ledgers_counts(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seed(sqlite_ledger, local_store, 20)
    create_release(sqlite_ledger, local_store, "v", OPTIONS)
    rid = _row(sqlite_ledger, "v")["id"]
    m = release_member.c
    with sqlite_ledger.engine.begin() as conn:
        moved = conn.execute(sa.select(m.sample_id).where(m.release_id == rid, m.shard == "00000").limit(1)).scalar_one()
        conn.execute(sa.update(release_member).where(m.release_id == rid, m.sample_id == moved).values(shard="00001"))
        strayed = conn.execute(sa.select(m.sample_id).where(m.release_id == rid, m.shard == "00002").limit(1)).scalar_one()
        conn.execute(sa.update(release_member).where(m.release_id == rid, m.sample_id == strayed).values(shard="99999"))
        conn.execute(sa.update(release_version).where(release_version.c.release_id == rid).values(samples=1))
    problems = _problems(sqlite_ledger, local_store, "v")
    samples = _manifest(local_store, "v")["counts"]["samples"]
    for needle in (
        "release_member: the ledger puts current members in shard(s) the manifest does not list: 99999",
        "release_member: the ledger's current members of shard 00000 differ in number from the manifest: expected 3, got 2",
        "release_member: the ledger's current members of shard 00001 differ in number from the manifest: expected 3, got 4",
        "release_member: the ledger's current members of shard 00002 differ in number from the manifest: expected 3, got 2",
        f"manifest.json: sample count differs from the ledger's record of version 1 (release_version): expected 1, got {samples}",
    ):
        assert needle in problems, (needle, problems)


def test_verify_finds_a_manifest_the_ledger_does_not_record_as_published(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seed(sqlite_ledger, local_store, 20)
    create_release(sqlite_ledger, local_store, "v", OPTIONS)
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.update(release).where(release.c.name == "v").values(state="failed"))
    problems = _problems(sqlite_ledger, local_store, "v")
    assert ("manifest.json: is in the store, but the ledger records the release as failed: run `taisu-etl release create v` "
            "to record it: expected published, got failed") in problems, problems
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.delete(release).where(release.c.name == "v"))
    problems = _problems(sqlite_ledger, local_store, "v")
    assert any(p.startswith("manifest.json: the ledger has no record of release v (no `release` row)") for p in problems), problems


def test_verify_requires_the_id_list_in_the_manifest(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seed(sqlite_ledger, local_store, 20)
    create_release(sqlite_ledger, local_store, "v", OPTIONS)
    manifest = _manifest(local_store, "v")
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "ids.txt"]
    local_store.put("releases/v/manifest.json", json.dumps(manifest).encode())
    problems = _problems(None, local_store, "v")  # type: ignore[arg-type]
    assert "manifest.json: does not list ids.txt, which every release has" in problems, problems
