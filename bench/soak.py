"""Soak: the whole pipeline as separate `taisu-etl` processes while a chaos loop SIGKILLs them.

    python bench/soak.py --samples 2000            # a try-out: a few minutes on this shared 2-core machine
    python bench/soak.py                           # 20,000 samples

What runs: a Postgres ledger in a database of its own (`--db-url`, dropped and recreated, and
dropped again at the end unless `--keep`), the S3 server the tests use (moto's, its own process on
127.0.0.1; `--s3 rclone` for bench/fetch.py's stand-in) and the synthetic web (taisu_etl/synthweb,
on 127.0.0.1, allowlisted through `fetch.allow_loopback`). The stages run the way users run them:
one `taisu-etl` command per stage and shard (`ingest FILE`, `text-filter --shard N`, `fetch
--shard N`, `dedup --shard N`, `score --shard N`, `caption --shard N`, then `release create`),
configured by TAISU_* variables, `--parallel` of them at once, stage after stage as the DAG
chains them. They import a copy of taisu_etl taken when the soak starts, so that edits made to the
working tree during a long run cannot mix two versions in one run. Score and caption use the project's built-in tiny models (taisu_etl/models/tiny,
made by taisu_etl/models/build_tiny.py), as the tests do.

Chaos: every `--kill-every` seconds (jittered by +-50%, seeded by `--seed`) one running stage
process, picked at random, gets SIGKILL, no warning, no clean-up; the supervisor restarts the same
command, as Airflow retries a task. A task is killed at most `--max-kills-per-task` times, so that
a shard whose work takes longer than the kill interval still finishes (the point is what a kill
leaves behind, not a livelock). The release is built under the same chaos. Nothing here touches
the ledger between kills: a killed process's leases are freed by the project's own dead-owner
detection (taisu_etl/db/leases.py) when the restarted process claims again.

After the pipeline, the script checks and prints:
- every sample is in a final state (none left in an intermediate state) and none is leased;
- one event per transition: each sample's events form one chain from its ingest event to its
  current state (every event starts where the previous one ended), so a move applied twice, a
  lost event or an event without a move all show; plus repeated (sample, from, to) events;
- stored objects equal ledger rows: images/ keys in the bucket against the object keys the
  samples name (no orphans, none missing), and the embeddings files against the scored samples
  (each scored sample in exactly one file, no file for samples that were not scored);
- the release verifies (`taisu-etl release verify`: every file re-hashed, members against the
  ledger, nothing in its folder but what the manifest lists) and holds every eligible sample;
- the stage processes a kill left behind (children that outlived their killed parent).
Then the kills made, the wall time and the command that reproduces the run. Exit status 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch import S3Server, default_workdir, start_s3  # noqa: E402  (the S3 stand-ins of bench/fetch.py)
from ledger import _reset_database  # noqa: E402  (recreate the soak's database)

import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.procfs import stat_fields  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb, make_pairs  # noqa: E402

CLI = Path(sys.executable).with_name("taisu-etl")
RELEASE = "soak"
FINAL = ("text_rejected", "fetch_failed", "expired", "image_rejected", "duplicate", "score_rejected", "captioned", "taken_down")
# What each stage command takes in: the samples a finished stage must have left none of.
STAGE_INPUT = {"text-filter": ("ingested",), "fetch": ("text_ok", "fetch_retry"), "dedup": ("fetched",),
               "score": ("image_ok",), "caption": ("accepted",)}
LEFTOVER_GRACE_S = 10.0
MAX_FAILURES = 3  # exits that were not our kills, per task, before the soak gives up


# ------------------------------------------------------------------------------------ processes


@dataclass
class Task:
    """One stage command (one shard, one file, or the release), run until it exits 0."""

    stage: str
    argv: list[str]
    label: str
    kills: int = 0
    failures: list[str] = field(default_factory=list)  # "exit N: last stderr line" of exits we did not cause
    runs: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    killed_now: bool = False
    log: Path | None = None


@dataclass
class Chaos:
    """The kill schedule and what it did."""

    rng: random.Random
    every_s: float
    max_per_task: int
    next_at: float = 0.0
    kills: Counter[str] = field(default_factory=Counter)  # stage -> kills
    killed_groups: dict[int, str] = field(default_factory=dict)  # process group of a killed command -> its label

    def schedule(self, now: float) -> None:
        self.next_at = now + self.every_s * self.rng.uniform(0.5, 1.5)

    def maybe_kill(self, running: list[Task], now: float) -> None:
        if self.every_s <= 0 or now < self.next_at:
            return
        self.schedule(now)
        victims = [t for t in running if t.kills < self.max_per_task and t.proc is not None and t.proc.poll() is None]
        if not victims:
            return
        victim = self.rng.choice(victims)
        assert victim.proc is not None
        try:
            os.kill(victim.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        victim.kills += 1
        victim.killed_now = True
        self.kills[victim.stage] += 1
        self.killed_groups[victim.proc.pid] = victim.label  # started with start_new_session: the pid is the group id
        print(f"    kill: {victim.label} (pid {victim.proc.pid}, after {now - victim.started:.1f} s)", flush=True)


class Supervisor:
    """Runs stage commands `parallel` at a time, restarts the killed ones, lets the chaos loop pick victims."""

    def __init__(self, env: dict[str, str], logs: Path, chaos: Chaos, parallel: int) -> None:
        self.env, self.logs, self.chaos, self.parallel = env, logs, chaos, parallel
        self.unexpected: list[str] = []  # failures that were not kills (still restarted, up to MAX_FAILURES)

    def _start(self, task: Task) -> None:
        task.runs += 1
        task.log = self.logs / f"{task.label.replace(' ', '_')}.{task.runs}.log"
        with task.log.open("wb") as out:
            task.proc = subprocess.Popen([str(CLI), *task.argv], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        task.started = time.monotonic()
        task.killed_now = False

    def run(self, tasks: list[Task]) -> None:
        pending: deque[Task] = deque(tasks)
        running: list[Task] = []
        while pending or running:
            for task in list(running):
                assert task.proc is not None
                rc = task.proc.poll()
                if rc is None:
                    continue
                running.remove(task)
                if rc == 0:
                    continue
                if task.killed_now and rc == -signal.SIGKILL:
                    pending.appendleft(task)  # a retry, as Airflow would run it
                    continue
                last = _last_line(task.log)
                task.failures.append(f"exit {rc}: {last}")
                self.unexpected.append(f"{task.label}: exit {rc}: {last} (log {task.log})")
                print(f"    FAILED: {task.label} exit {rc}: {last}", flush=True)
                if len(task.failures) >= MAX_FAILURES:
                    raise SoakAbort(f"{task.label} failed {MAX_FAILURES} times without being killed; last: {last} (log {task.log})")
                pending.appendleft(task)
            while pending and len(running) < self.parallel:
                task = pending.popleft()
                self._start(task)
                running.append(task)
            self.chaos.maybe_kill(running, time.monotonic())
            time.sleep(0.1)

    def run_once(self, argv: list[str], label: str) -> tuple[int, str]:
        """A command outside the chaos (the final verify): exit status and output."""
        proc = subprocess.run([str(CLI), *argv], env=self.env, capture_output=True, text=True)
        (self.logs / f"{label}.log").write_text(proc.stderr + proc.stdout)
        return proc.returncode, proc.stderr + proc.stdout


class SoakAbort(Exception):
    pass


def _last_line(path: Path | None) -> str:
    if path is None or not path.exists():
        return "(no output)"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def leftover_processes(groups: dict[int, str]) -> list[tuple[int, str, str]]:
    """(pid, command line, killed command) of processes still alive in the process groups of killed
    commands: children a kill left running."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(int(entry))
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) not in groups:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmd[:120], groups[int(fields[2])]))
    return found


def _kind(cmd: str) -> str:
    """A short name for a leftover process: the multiprocessing role or the command."""
    for role in ("forkserver", "resource_tracker", "spawn_main", "taisu-etl"):
        if role in cmd:
            return role
    return cmd.split(" ", 1)[0][-40:]


# ---------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def ledger_checks(engine: sa.Engine) -> tuple[list[Check], dict[str, int], int]:
    """Final states, leases and the event chains; returns (checks, samples per state, events)."""
    with engine.connect() as conn:
        states = {s: int(n) for s, n in conn.execute(sa.text("SELECT state, count(*) FROM sample_state GROUP BY state"))}
        leased = conn.execute(sa.text("SELECT count(*) FROM sample_state WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL")).scalar_one()
        events = conn.execute(sa.text("SELECT count(*) FROM sample_event")).scalar_one()
        chain = conn.execute(sa.text(
            "WITH e AS (SELECT sample_id, from_state, to_state, "
            "lag(to_state) OVER (PARTITION BY sample_id ORDER BY id) AS prev, "
            "row_number() OVER (PARTITION BY sample_id ORDER BY id) AS n, "
            "row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) AS back FROM sample_event) "
            "SELECT count(*) FILTER (WHERE n = 1 AND (from_state IS NOT NULL OR to_state <> 'ingested')), "
            "count(*) FILTER (WHERE n > 1 AND from_state IS DISTINCT FROM prev), "
            "count(*) FILTER (WHERE n > 1 AND from_state IS NULL) FROM e")).one()
        last_wrong = conn.execute(sa.text(
            "SELECT count(*) FROM sample_state st LEFT JOIN LATERAL (SELECT to_state FROM sample_event ev "
            "WHERE ev.sample_id = st.sample_id ORDER BY ev.id DESC LIMIT 1) l ON true "
            "WHERE l.to_state IS DISTINCT FROM st.state")).scalar_one()
        repeated = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT 1 FROM sample_event GROUP BY sample_id, from_state, to_state HAVING count(*) > 1) d")).scalar_one()
        example = conn.execute(sa.text(
            "SELECT sample_id FROM sample_event GROUP BY sample_id, from_state, to_state HAVING count(*) > 1 LIMIT 1")).scalar()
    total = sum(states.values())
    stuck = {s: n for s, n in states.items() if s not in FINAL}
    checks = [
        Check("every sample in a final state", not stuck,
              f"{total:,} samples, {total - sum(stuck.values()):,} final" + (f"; left in {stuck}" if stuck else "")),
        Check("no sample leased", leased == 0, f"{leased:,} samples still carry a lease"),
        Check("event chains start with the ingest event", chain[0] == 0, f"{chain[0]:,} samples whose first event is not ingest"),
        Check("each event starts where the previous ended", chain[1] == 0 and chain[2] == 0,
              f"{chain[1]:,} events out of chain, {chain[2]:,} later events with no from-state"),
        Check("last event = current state", last_wrong == 0, f"{last_wrong:,} samples whose state is not their last event's"),
        Check("no repeated (sample, from, to) event", repeated == 0,
              f"{repeated:,} repeated" + (f" (e.g. sample {example})" if example is not None else "")),
    ]
    return checks, states, int(events)


def store_checks(engine: sa.Engine, server: S3Server) -> tuple[list[Check], dict[str, int]]:
    """The bucket against the ledger: images/ and embeddings/."""
    store = server.store()
    stored = {info.key for info in store.list("images/")}
    with engine.connect() as conn:
        named = {k for (k,) in conn.execute(sa.text("SELECT DISTINCT object_key FROM sample WHERE object_key IS NOT NULL"))}
        scored = {int(i) for (i,) in conn.execute(sa.text("SELECT id FROM sample WHERE score IS NOT NULL"))}
    orphans, missing = stored - named, named - stored
    in_files: Counter[int] = Counter()
    files = 0
    for info in store.list("embeddings/"):
        files += 1
        with np.load(io.BytesIO(store.get(info.key))) as npz:
            in_files.update(int(i) for i in npz["ids"])
    twice = sum(1 for n in in_files.values() if n > 1)
    unscored = set(in_files) - scored
    without = scored - set(in_files)
    checks = [
        Check("no orphan image in the store", not orphans,
              f"{len(stored):,} objects under images/, {len(orphans):,} named by no sample" + (f" (e.g. {min(orphans)})" if orphans else "")),
        Check("no image missing from the store", not missing,
              f"{len(named):,} object keys in the ledger, {len(missing):,} not in the store" + (f" (e.g. {min(missing)})" if missing else "")),
        Check("each scored sample in exactly one embeddings file", twice == 0 and not without,
              f"{files:,} files, {len(in_files):,} samples in them, {twice:,} in more than one, {len(without):,} scored samples in none"),
        Check("no embeddings for samples that were not scored", not unscored, f"{len(unscored):,} ids in files but not scored in the ledger"),
    ]
    return checks, {"images": len(stored), "image_keys": len(named), "embeddings_files": files, "scored": len(scored)}


def release_checks(engine: sa.Engine, sup: Supervisor) -> tuple[list[Check], int]:
    rc, out = sup.run_once(["release", "verify", RELEASE], "release_verify")
    print("  " + "\n  ".join(line for line in out.strip().splitlines()[-3:]))
    with engine.connect() as conn:
        eligible = conn.execute(sa.text("SELECT count(*) FROM sample_state WHERE state IN ('accepted', 'captioned')")).scalar_one()
        members = conn.execute(sa.text(
            "SELECT count(*) FROM release_member m JOIN release r ON r.id = m.release_id WHERE r.name = :n"), {"n": RELEASE}).scalar_one()
    return [
        Check("release verifies", rc == 0, _last_line_of(out)),
        Check("release holds every eligible sample", members == eligible, f"{members:,} members, {eligible:,} samples accepted or captioned"),
    ], int(members)


def _last_line_of(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ------------------------------------------------------------------------------------------ run


def snapshot_code(workdir: Path) -> Path:
    """A copy of the package as it is now, which every stage command imports (ahead of the editable
    install): the working tree may change during a long soak, and one run must run one version."""
    code = workdir / "code"
    shutil.copytree(Path(__file__).resolve().parents[1] / "taisu_etl", code / "taisu_etl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return code


def remaining(engine: sa.Engine, states: tuple[str, ...]) -> tuple[int, float]:
    """Samples in `states`, and seconds until the last of them is due (retries wait for next_attempt_at)."""
    with engine.connect() as conn:
        n, wait = conn.execute(sa.text(
            "SELECT count(*), coalesce(extract(epoch FROM max(next_attempt_at) - now()), 0) FROM sample_state "
            "WHERE state = ANY(:s)"), {"s": list(states)}).one()
    return int(n), max(float(wait), 0.0)


def shards_with(engine: sa.Engine, states: tuple[str, ...]) -> list[int]:
    with engine.connect() as conn:
        return [int(s) for (s,) in conn.execute(sa.text(
            "SELECT DISTINCT shard FROM sample_state WHERE state = ANY(:s) ORDER BY 1"), {"s": list(states)})]


def run_pipeline(sup: Supervisor, engine: sa.Engine, lists: list[Path]) -> dict[str, float]:
    """Every stage as the DAG chains them, each stage's shards as separate commands; returns wall seconds per stage."""
    walls: dict[str, float] = {}

    def stage(name: str, tasks: list[Task]) -> None:
        t0 = time.perf_counter()
        print(f"  {name}: {len(tasks)} commands", flush=True)
        sup.run(tasks)
        # A stage whose commands all exited 0 must have left nothing in its input state; a sample
        # waiting for its retry (fetch_retry) is run again once due, as the next DAG run would.
        for round_ in range(1, 4):
            if name not in STAGE_INPUT:
                break
            left, wait = remaining(engine, STAGE_INPUT[name])
            if not left:
                break
            if name != "fetch":
                sup.unexpected.append(f"{name}: every command exited 0 but {left:,} samples are still in {STAGE_INPUT[name]}")
            print(f"  {name}: {left:,} samples left in {STAGE_INPUT[name]}; round {round_ + 1} in {wait:.0f} s", flush=True)
            time.sleep(min(wait + 0.5, 120))
            sup.run([Task(name, [name, "--shard", str(s)], f"{name} shard {s} round {round_ + 1}")
                     for s in shards_with(engine, STAGE_INPUT[name])])
        walls[name] = time.perf_counter() - t0
        print(f"  {name}: done in {walls[name]:.1f} s", flush=True)

    stage("ingest", [Task("ingest", ["ingest", str(p)], f"ingest {p.name}") for p in lists])
    for name in ("text-filter", "fetch", "dedup", "score", "caption"):
        stage(name, [Task(name, [name, "--shard", str(s)], f"{name} shard {s}") for s in shards_with(engine, STAGE_INPUT[name])])
    stage("release", [Task("release", ["release", "create", RELEASE, "--no-parent"], "release create")])
    return walls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000, help="synthetic URL/caption pairs")
    ap.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills (0: no chaos)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the pairs and the kill schedule")
    ap.add_argument("--keep", action="store_true", help="keep the database, the work folder and the logs")
    ap.add_argument("--shards", type=int, default=8, help="ledger shards (one command per stage and shard)")
    ap.add_argument("--parallel", type=int, default=3, help="stage commands running at once")
    ap.add_argument("--max-kills-per-task", type=int, default=2, help="kills one command may take before it is left to finish")
    ap.add_argument("--files", type=int, default=4, help="URL lists the pairs are split into (one ingest command each)")
    ap.add_argument("--s3", choices=("moto", "rclone"), default="moto", help="S3 server: moto's (the tests') or rclone serve s3")
    ap.add_argument("--workdir", type=Path, default=None, help="where logs and S3 files go (default /dev/shm when it has room)")
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_SOAK_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_soak"))
    args = ap.parse_args(argv)
    if args.samples < args.files:
        ap.error("--samples must be at least --files")

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="taisu-soak-", dir=args.workdir or default_workdir()))
    logs = workdir / "logs"
    logs.mkdir()
    database = sa.engine.make_url(args.db_url).database
    if not database:
        ap.error("--db-url must name a database (it is dropped and recreated)")
    _reset_database(args.db_url)
    engine = make_engine(args.db_url)
    server = start_s3(args.s3, workdir)
    chaos = Chaos(random.Random(args.seed), args.kill_every, args.max_kills_per_task)
    checks: list[Check] = []
    try:
        t0 = time.perf_counter()
        pairs = make_pairs(args.samples, seed=args.seed, split="heldout")
        with SyntheticWeb(pairs, processes=1) as web:
            per = -(-len(pairs) // args.files)
            lists = [Path(web.write_url_list(workdir / f"soak-{i}.csv", pairs[i * per:(i + 1) * per]).urls) for i in range(args.files)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
            env.update(server.cli_env())
            env["PYTHONPATH"] = str(snapshot_code(workdir))
            env.update({
                "TAISU_HOME": str(workdir / "home"), "TAISU_DB_URL": args.db_url, "TAISU_RECIPE_VERSION": "soak",
                "TAISU_PIPELINE__SHARDS": str(args.shards),
                # One host serves every image: lift the per-host politeness limits (bench/fetch.py does the same),
                # and let transient failures come due again within the run.
                "TAISU_FETCH__ALLOW_LOOPBACK": json.dumps([web.netloc]), "TAISU_FETCH__PER_HOST_CONCURRENCY": "64",
                "TAISU_FETCH__PER_HOST_RATE": "0", "TAISU_FETCH__RETRY_BASE_S": "2",
                # Several model processes share two cores: one torch thread and one image worker each.
                "TAISU_SCORE__WORKERS": "1", "TAISU_CAPTION__WORKERS": "1", "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            })
            sup = Supervisor(env, logs, chaos, args.parallel)
            for argv_ in (["db", "upgrade"], ["storage", "init"] if args.s3 == "moto" else ["storage", "check"]):
                rc, out = sup.run_once(argv_, "_".join(argv_))
                if rc != 0:
                    raise SoakAbort(f"taisu-etl {' '.join(argv_)} failed: {_last_line_of(out)}")
            print(f"setup: {len(pairs):,} pairs on {web.base_url} in {args.files} URL lists ({time.perf_counter() - t0:.1f} s), "
                  f"ledger {engine.url.render_as_string(hide_password=True)} with {args.shards} shards, S3 {args.s3} at "
                  f"{server.endpoint}; {args.parallel} commands at once, a kill every ~{args.kill_every:g} s "
                  f"(at most {args.max_kills_per_task} per command); logs in {logs}", flush=True)
            chaos.schedule(time.monotonic())
            t_pipe = time.perf_counter()
            walls = run_pipeline(sup, engine, lists)
            pipeline_s = time.perf_counter() - t_pipe

        print("\nchecks")
        ledger_c, states, events = ledger_checks(engine)
        store_c, objects = store_checks(engine, server)
        release_c, members = release_checks(engine, sup)
        time.sleep(LEFTOVER_GRACE_S)  # a child that notices its parent's death on its own has had time to exit
        left = leftover_processes(chaos.killed_groups)
        kinds = Counter(_kind(cmd) for _, cmd, _ in left)
        owners = Counter(label.rsplit(" shard", 1)[0] for _, _, label in left)
        checks = [*ledger_c, *store_c, *release_c,
                  Check("no process outlives its killed command", not left,
                        f"{len(left)} still running {LEFTOVER_GRACE_S:g} s after the pipeline ended"
                        + (": " + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + "; of killed "
                           + ", ".join(f"{k} ({n})" for k, n in owners.most_common()) + " commands" if left else "")),
                  Check("no command failed except by our kills", not sup.unexpected,
                        f"{len(sup.unexpected)}" + (f": {sup.unexpected[0]}" if sup.unexpected else ""))]
        for pid, _, _ in left:  # descendants of commands this script started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for c in checks:
            print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        for line in sup.unexpected[1:]:
            print(f"         {line}")

        total = sum(states.values())
        print(f"\nsamples: {total:,}; per state: " + ", ".join(f"{s} {n:,}" for s, n in sorted(states.items(), key=lambda kv: -kv[1])))
        print(f"events: {events:,} ({events / max(total, 1):.2f} per sample); stored images {objects['images']:,}, "
              f"embeddings files {objects['embeddings_files']:,} for {objects['scored']:,} scored samples; release {RELEASE}: {members:,} samples")
        print(f"kills: {sum(chaos.kills.values())} (" + ", ".join(f"{s} {n}" for s, n in chaos.kills.items()) + ")")
        print("wall: " + ", ".join(f"{s} {w:.0f} s" for s, w in walls.items()) + f"; pipeline {pipeline_s:.0f} s, "
              f"whole soak {time.perf_counter() - started:.0f} s ({os.cpu_count()} cores, shared with other work)")
    except SoakAbort as exc:
        print(f"soak aborted: {exc}")
        checks.append(Check("soak ran to the end", False, str(exc)))
    finally:
        for pid, _, _ in leftover_processes(chaos.killed_groups):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.stop()
        engine.dispose()
        if args.keep:
            print(f"kept: database {database}, work folder {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            admin = make_engine(sa.engine.make_url(args.db_url).set(database="postgres").render_as_string(hide_password=False))
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.dispose()
    safe = sa.engine.make_url(args.db_url).render_as_string(hide_password=True)
    print(f"\nreproduce: .venv/bin/python bench/soak.py --samples {args.samples} --kill-every {args.kill_every:g} --seed {args.seed} "
          f"--shards {args.shards} --parallel {args.parallel} --max-kills-per-task {args.max_kills_per_task} --files {args.files} "
          f"--s3 {args.s3} --db-url {safe}")
    return 0 if checks and all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
