"""A Celery worker dies with its machine in the middle of a fetch task, and again in the middle of a release.

A production deployment of its own (tests/deploy/stack.py; moto's S3 server as the store, which
keeps object versions as MinIO does). The `default` worker is killed as a machine dies: its whole
process tree (pool processes, task supervisors, task processes in their own groups, the fetch
stage's fork server and decoders) frozen, then SIGKILLed at one instant, so nothing of it says
goodbye. A new worker takes its place (`taisu_etl.deploy.restart_worker`), the scheduler notices
the lost tasks by their missing heartbeats (30 s), and the DAGs' retries run them again.

What must hold: both runs succeed; each sample has exactly one decision per stage (the killed
fetch had leased its shard's samples and stored images but recorded nothing: the retry breaks the
dead owner's leases at once and does it all, once); nothing stays leased; and no partial release
is ever visible: a thread watches the store and the ledger through the whole test, and a release
appears only with its manifest and complete, while the killed try's files lie there without one.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.db.schema import release, release_member, sample, sample_event, sample_state  # noqa: E402
from taisu_etl.release import verify_release  # noqa: E402
from taisu_etl.release.selection import ELIGIBLE_STATES  # noqa: E402
from taisu_etl.storage import ObjectStore  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb, make_pairs  # noqa: E402
from tests.deploy.stack import Stack, production_stack  # noqa: E402

pytestmark = [pytest.mark.airflow, pytest.mark.postgres, pytest.mark.s3]

PAIRS, SHARDS = 40, 2
# Slow enough downloads to be caught in the middle: each fetch task asks the one host 3 times a second.
FETCH_RATE = "3"
RELEASE = "fault-release"
PIPELINE_STAGES = ("ingest", "text", "fetch", "image", "score", "caption")


@dataclass
class ReleaseWatch:
    """Polls the store and the ledger while the test runs: is any release visible before it is complete?

    Visible means a `releases/NAME/manifest.json` in the store, or a `published` release row. A
    manifest seen for the first time is verified in full (every file's checksum and count), and on
    every later poll every file it lists must still be there with its size; a published row must
    have its manifest (the ledger is read before the store: the manifest is written first).
    """

    store: ObjectStore
    engine: sa.Engine
    interval: float = 0.2
    polls: int = 0
    violations: list[str] = field(default_factory=list)
    unfinished_seen: Counter[str] = field(default_factory=Counter)  # polls that saw files of NAME and no manifest
    manifests: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {path: size} once verified
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "ReleaseWatch":
        self._thread = threading.Thread(target=self._run, name="release-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a store or ledger hiccup is reported, not fatal to the watch
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def poll(self) -> None:
        from taisu_etl.release import read_manifest

        with self.engine.connect() as conn:
            published = {n for n, s in conn.execute(sa.select(release.c.name, release.c.state)) if s == "published"}
        files: dict[str, dict[str, int]] = {}
        for info in self.store.list("releases/"):
            name, _, path = info.key.removeprefix("releases/").partition("/")
            files.setdefault(name, {})[path] = info.size
        self.polls += 1
        for name in published - {n for n, f in files.items() if "manifest.json" in f}:
            self.violations.append(f"poll {self.polls}: release {name} is published in the ledger without a manifest")
        for name, present in files.items():
            if "manifest.json" not in present:
                self.unfinished_seen[name] += 1
                continue
            if name not in self.manifests:
                report = verify_release(self.store, name)
                if not report.ok:
                    self.violations.append(f"poll {self.polls}: {report.summary()}")
                    continue
                manifest = read_manifest(self.store, name) or {}
                self.manifests[name] = {f["path"]: int(f["bytes"]) for f in manifest.get("files", [])}
            for path, size in self.manifests[name].items():
                if present.get(path) != size:
                    self.violations.append(f"poll {self.polls}: release {name} has a manifest but {path} is "
                                           f"{'missing' if path not in present else f'{present[path]} bytes, not {size}'}")


@pytest.fixture(scope="module")
def web() -> Iterator[SyntheticWeb]:
    with SyntheticWeb(make_pairs(PAIRS, seed=5)) as web:
        yield web


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, web: SyntheticWeb) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    with production_stack(root, tag="faults", web=web, s3="moto", shards=SHARDS,
                          extra_env={"TAISU_FETCH__PER_HOST_RATE": FETCH_RATE}) as stack:
        stack.wait_for_dags()
        yield stack


def _image_hits(web: SyntheticWeb) -> int:
    return sum(n for path, n in web.hits_by_path().items() if path.startswith("/img/"))


def _running(stack: Stack, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return [ti for ti in stack.task_instances(dag_id, run_id) if ti["task_id"] == task_id and ti["state"] == "running"]


def _wait(what: str, check: Any, timeout: float, stack: Stack, dag_id: str, run_id: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{stack.diagnose(dag_id, run_id)}")
        time.sleep(interval)
    return found


def _log_of_try(stack: Stack, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    logs = {p.name: p for p in stack.task_logs(dag_id, run_id, task_id, map_index)}
    assert f"attempt={try_number}.log" in logs, (task_id, map_index, sorted(logs))
    return logs[f"attempt={try_number}.log"].read_text(encoding="utf-8", errors="replace")


def test_a_worker_killed_mid_fetch_and_mid_release_ends_with_every_sample_once_and_no_partial_release(
        stack: Stack, web: SyntheticWeb) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    (stack.root / "lists").mkdir(exist_ok=True)
    urls = web.write_url_list(stack.root / "lists" / "pairs.csv").urls
    api = stack.api()
    # The release is started by hand below, named and in small shards (slow enough to be caught
    # in the middle): a paused DAG gets no run from the pipeline's asset event.
    stack.set_paused("taisu_release", True)
    watch = ReleaseWatch(stack.store(), stack.ledger_engine())
    with watch:
        # -- a machine dies in the middle of the fetch tasks
        run_id = api.trigger("taisu_pipeline", {"sources": [str(urls)]})["dag_run_id"]

        def fetch_leases() -> dict[int, int]:
            s = sample_state.c
            with stack.ledger_engine().connect() as conn:
                return dict(conn.execute(sa.select(s.shard, sa.func.count()).where(s.lease_owner.like("fetch%"))
                                         .group_by(s.shard)).all())

        leased: dict[int, int] = {}

        def mid_fetch() -> list[dict[str, Any]]:
            # Every shard's task has claimed (leased) its samples and the downloads have begun: a
            # task's leases go only when it records its outcomes, at the end of its shard. The leases
            # are read last, right before the kill: a shard can finish between two reads on a busy machine.
            if _image_hits(web) < 2 * SHARDS:
                return []
            running = _running(stack, "taisu_pipeline", run_id, "fetch")
            if len(running) != SHARDS:
                return []
            leased.clear()
            leased.update(fetch_leases())
            return running if len(leased) == SHARDS else []

        killed_tries = _wait("every fetch task downloading", mid_fetch, 240, stack, "taisu_pipeline", run_id, interval=0.05)
        hits_at_kill = _image_hits(web)
        killed = stack.kill_worker("default")
        timings["fetch killed"] = time.monotonic() - began
        with stack.ledger_engine().connect() as conn:
            fetch_events_at_kill = conn.execute(sa.select(sa.func.count()).where(sample_event.c.stage == "fetch")).scalar_one()
        assert set(leased) == set(range(SHARDS)) and len(killed) >= 3, (leased, killed)
        stack.restart_worker("default")

        stack.wait_for_run("taisu_pipeline", run_id, timeout=360)
        timings["pipeline done"] = time.monotonic() - began
        fetch_tis = [ti for ti in stack.task_instances("taisu_pipeline", run_id) if ti["task_id"] == "fetch"]
        retried = {ti["map_index"]: ti["try_number"] for ti in fetch_tis}
        # The retried tries carry their shard's name as the first try did.
        assert {ti["map_index"]: ti["rendered_map_index"] for ti in fetch_tis} == {i: f"shard {i}" for i in retried}
        for ti in killed_tries:
            assert retried[ti["map_index"]] > ti["try_number"], (killed_tries, retried)

        # -- and again in the middle of building the release
        stack.set_paused("taisu_release", False)
        release_run = api.trigger("taisu_release", {"name": RELEASE, "shard_size": 1})["dag_run_id"]
        store = stack.store()

        def mid_release() -> bool:
            with stack.ledger_engine().connect() as conn:
                row = conn.execute(sa.select(release.c.state).where(release.c.name == RELEASE)).first()
            if row is None or row.state != "staging":
                return False
            keys = {info.key for info in store.list(f"releases/{RELEASE}/")}
            assert f"releases/{RELEASE}/manifest.json" not in keys, (
                "the release was published before the test could kill its worker: make it slower (more samples, smaller shards)")
            return bool(keys)

        _wait("the release's first files in the store", mid_release, 240, stack, "taisu_release", release_run, interval=0.05)
        stack.kill_worker("default")
        create_try = _running(stack, "taisu_release", release_run, "create")  # (running until its heartbeat is missed)
        timings["release killed"] = time.monotonic() - began
        left_behind = {info.key for info in store.list(f"releases/{RELEASE}/")}
        assert left_behind and f"releases/{RELEASE}/manifest.json" not in left_behind
        stack.restart_worker("default")

        stack.wait_for_run("taisu_release", release_run, timeout=240)
        timings["release done"] = time.monotonic() - began
        time.sleep(3 * watch.interval)  # the watch looks once more at the finished release

    # Nothing was visible before it was complete, and the killed try's files were seen unfinished.
    assert not watch.violations, watch.violations
    assert not watch.errors, watch.errors[:5]
    assert watch.polls > 50 and watch.unfinished_seen[RELEASE] > 0, (watch.polls, watch.unfinished_seen)
    assert set(watch.manifests) == {RELEASE}
    create_tries = [ti["try_number"] for ti in stack.task_instances("taisu_release", release_run) if ti["task_id"] == "create"]
    assert create_try and create_tries[0] > create_try[0]["try_number"], (create_try, create_tries)

    # Every sample: once per stage, decided by one try of one task; none leased.
    e = sample_event.c
    with stack.ledger_engine().connect() as conn:
        samples = conn.execute(sa.select(sa.func.count()).select_from(sample)).scalar_one()
        events = conn.execute(sa.select(e.sample_id, e.stage, e.task_id, e.map_index, e.try_number, e.worker)
                              .where(e.stage.in_(PIPELINE_STAGES))).mappings().all()
        states = Counter(dict(conn.execute(sa.select(sample_state.c.state, sa.func.count()).group_by(sample_state.c.state)).all()))
        releasable = conn.execute(sa.select(sa.func.count(sa.distinct(sample.c.url_id)))
                                  .join(sample_state, sample_state.c.sample_id == sample.c.id)
                                  .where(sample_state.c.state.in_(ELIGIBLE_STATES))).scalar_one()
        rows = conn.execute(sa.select(release.c.id, release.c.name, release.c.state)).all()
        members = conn.execute(sa.select(sa.func.count()).select_from(release_member)).scalar_one()
    assert samples == PAIRS
    per_stage = Counter((ev["sample_id"], ev["stage"]) for ev in events)
    assert max(per_stage.values()) == 1, [k for k, n in per_stage.items() if n > 1]
    fetched = [ev for ev in events if ev["stage"] == "fetch"]
    assert len(fetched) == PAIRS and fetch_events_at_kill == 0  # the killed tries had recorded nothing yet
    assert {ev["try_number"] for ev in fetched if ev["map_index"] in {t["map_index"] for t in killed_tries}} \
        == {retried[t["map_index"]] for t in killed_tries}
    assert _image_hits(web) > PAIRS and hits_at_kill > 0  # the retries downloaded again what the dead tries had
    for ti in killed_tries:  # ... at once: the dead owner's leases were broken, not waited out
        log = _log_of_try(stack, "taisu_pipeline", run_id, "fetch", ti["map_index"], retried[ti["map_index"]])
        assert re.search(rf"broke the leases of {leased[ti['map_index']]} samples in text_ok held by fetch@\S+ .*"
                         "that process is gone", log), log[-3000:]
    log = _log_of_try(stack, "taisu_release", release_run, "create", -1, create_tries[0])
    assert re.search(rf"removed \d+ files an earlier, unfinished run of {RELEASE} left behind", log), log[-3000:]
    assert stack.leased_samples() == 0
    assert not states.keys() & {"ingested", "text_ok", "fetch_retry", "fetched", "image_ok", "accepted"}, states
    assert {ev["stage"] for ev in events} == set(PIPELINE_STAGES)

    # One release, published, verified against the ledger, holding every releasable sample once.
    assert [(r.name, r.state) for r in rows] == [(RELEASE, "published")]
    ledger = stack.ledger()
    try:
        report = verify_release(stack.store(), RELEASE, ledger=ledger)
    finally:
        ledger.dispose()
    assert report.ok, report.summary()
    assert members == report.samples == releasable > 0
    print("timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
