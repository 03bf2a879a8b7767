"""A production deployment with everything a pipeline run needs, for the end-to-end tests.

`production_stack()` starts, in this order, and stops again whatever happens:

- a Postgres ledger of the test's own (`taisu_ledger_<tag>_<pid>`, dropped at the end);
- an S3 stand-in in a process of its own: rclone's `serve s3`, which verifies every request's
  SigV4 signature as MinIO does, or moto's server, which keeps object versions (rclone implements
  no ListObjectVersions, which a release retry uses to clear what a killed try left);
- the synthetic web on 127.0.0.1, served from this process, and the demo's URL lists for it;
- `taisu_etl.deploy.up` in production mode: Airflow's metadata in a Postgres database of its own,
  CeleryExecutor on the local Redis (a database number and key prefix of the test's own), workers
  for the `default` and `gpu` queues. Every Airflow process gets the `TAISU_*` settings that point
  the tasks at the ledger, the S3 stand-in and the synthetic web, and `[score]`/`[caption]
  queue = "gpu"` (read by the dag-processor when it parses the pipeline).

`Stack` then answers what the tests ask: the REST client, the ledger, the store, runs waited for
with a diagnosis (task states, the ends of the failed tasks' logs and of the workers' logs) when
they do not succeed, and a worker killed the way a machine dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import sample_state
from taisu_etl.deploy import Deployment, DeploySettings, down, restart_worker, up
from taisu_etl.deploy.api import AirflowApi
from taisu_etl.deploy.deployment import load
from taisu_etl.deploy.metadata import drop_postgres_database, ensure_postgres_database
from taisu_etl.deploy.processes import ProcessRecord, log_tail, process_tree, start_ticks
from taisu_etl.storage import S3ObjectStore
from taisu_etl.synthweb import SyntheticWeb
from tests.conftest import PG_ADMIN_URL
from tests.deploy.support import caller_environment, drop_redis_keys, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "var" / "test-artifacts"  # var/ is git-ignored
PIPELINE_DAGS = ("taisu_pipeline", "taisu_release", "taisu_recheck", "taisu_maintenance")
S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "taisu-e2e-access", "taisu-e2e-secret-key", "taisu-e2e"
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------- S3 stand-ins


@dataclass(frozen=True)
class S3StandIn:
    kind: str
    endpoint: str

    def store(self) -> S3ObjectStore:
        return S3ObjectStore(self.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail(log, 20)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s") from None
            time.sleep(0.1)


@contextmanager
def s3_stand_in(kind: Literal["rclone", "moto"], root: Path) -> Iterator[S3StandIn]:
    """An S3 server on 127.0.0.1 in a process of its own, with the bucket `S3_BUCKET` in it."""
    port = free_port()
    log = root / f"{kind}-s3.log"
    root.mkdir(parents=True, exist_ok=True)
    if kind == "rclone":
        data = root / "rclone-s3"
        (data / S3_BUCKET).mkdir(parents=True)  # a bucket is a folder; made first (see tests/storage/test_rclone_s3.py)
        command = [str(BIN / "rclone"), "serve", "s3", "--config", "", "--log-level", "ERROR", "--addr", f"127.0.0.1:{port}",
                   "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", str(data)]
    else:
        command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, log, f"{kind} S3 server")
        stand_in = S3StandIn(kind, f"http://127.0.0.1:{port}")
        if kind == "moto":  # versioned, as the product makes its own buckets (s3_create_bucket)
            S3ObjectStore(stand_in.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, create_bucket=True, versioning=True).check()
        stand_in.store().check()
        yield stand_in
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    settings: DeploySettings
    deployment: Deployment
    env: dict[str, str]  # what `up` was given: a restarted worker gets the same
    ledger_url: str
    s3: S3StandIn
    web: SyntheticWeb
    root: Path
    _api: AirflowApi | None = field(default=None, repr=False)
    _engine: sa.Engine | None = field(default=None, repr=False)

    # -- clients

    def api(self) -> AirflowApi:
        if self._api is None:
            self._api = self.deployment.api()
        return self._api

    def ledger(self) -> Ledger:
        return Ledger.open(self.ledger_url)

    def store(self) -> S3ObjectStore:
        return self.s3.store()

    # -- DAGs and runs

    def wait_for_dags(self, dag_ids: tuple[str, ...] = PIPELINE_DAGS, timeout: float = 180) -> dict[str, dict[str, Any]]:
        """The DAGs once the dag-processor has registered all of `dag_ids`."""
        deadline = time.monotonic() + timeout
        while True:
            dags = {d["dag_id"]: d for d in self.api().dags()}
            if set(dag_ids) <= set(dags):
                return dags
            if time.monotonic() > deadline:
                raise AssertionError(f"the dag-processor did not register {sorted(set(dag_ids) - set(dags))} within "
                                     f"{timeout:.0f} s; dag-processor log:\n{log_tail(self.settings.logs_dir / 'dag-processor.log', 30)}")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api().patch(f"/api/v2/dags/{dag_id}", {"is_paused": paused}, update_mask="is_paused")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api().get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100, order_by="id")["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api().task_instances(dag_id, run_id)

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait (bounded) for the run to finish; fail with a diagnosis unless it succeeded."""
        run = self.api().wait_for_run(dag_id, run_id, timeout=timeout)
        if run["state"] != "success":
            raise AssertionError(f"{dag_id} run {run_id} is {run['state']} after waiting up to {timeout:.0f} s\n"
                                 + self.diagnose(dag_id, run_id))
        return run

    def diagnose(self, dag_id: str, run_id: str) -> str:
        """Task states of a run, the end of each unfinished or failed task's log, and of the workers' and scheduler's."""
        lines = []
        try:
            tis = self.task_instances(dag_id, run_id)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
            tis = []
            lines.append(f"(task instances unavailable: {exc})")
        for ti in sorted(tis, key=lambda t: (t["task_id"], t["map_index"])):
            label = f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]
            lines.append(f"  {label}: {ti['state']} (try {ti['try_number']}, {ti.get('queue')}, {ti.get('hostname')})")
        for ti in tis:
            if ti["state"] != "success":
                for log in self.task_logs(dag_id, run_id, ti["task_id"], ti["map_index"]):
                    lines.append(f"--- {log.relative_to(self.settings.logs_dir)}:\n{airflow_log_tail(log, 25)}")
        for name in ("worker-default", "worker-gpu", "scheduler"):
            lines.append(f"--- {name}.log:\n{log_tail(self.settings.logs_dir / f'{name}.log', 15)}")
        return "\n".join(lines)

    def task_logs(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[Path]:
        """The log files of every try of a task instance (Airflow's default log_filename_template)."""
        folder = self.settings.logs_dir / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        return sorted(folder.glob("attempt=*.log"))

    # -- workers

    def worker(self, queue: str) -> ProcessRecord:
        self.deployment = load(self.settings.home) or self.deployment
        return self.deployment.process(f"worker-{queue}")

    def kill_worker(self, queue: str) -> dict[int, int]:
        """Kill the worker of `queue` as its machine dying would: every process of it at the same instant.

        The worker's tree (its pool processes, their task supervisors, the task processes in
        groups of their own, what those started) is frozen with SIGSTOP until no new process
        appears, then all of it gets SIGKILL. Returns what was killed (pid -> start ticks).
        """
        record = self.worker(queue)
        assert record.alive(), f"the {queue} worker is not running"
        frozen: dict[int, int] = {}
        for _ in range(50):
            tree = process_tree(record.pid)
            new = {pid: ticks for pid, ticks in tree.items() if frozen.get(pid) != ticks}
            if not new:
                break
            for pid, ticks in new.items():
                if start_ticks(pid) == ticks:
                    os.kill(pid, signal.SIGSTOP)
            frozen.update(new)
        for pid, ticks in frozen.items():
            if start_ticks(pid) == ticks:
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(start_ticks(pid) == ticks for pid, ticks in frozen.items()):
            try:
                os.waitpid(record.pid, os.WNOHANG)  # the worker is our child (spawned by `up`): no zombie left
            except ChildProcessError:
                pass
            assert time.monotonic() < deadline, "killed worker processes are still alive after 10 s"
            time.sleep(0.05)
        return frozen

    def restart_worker(self, queue: str) -> ProcessRecord:
        record = restart_worker(self.settings, queue, env=self.env, timeout=120)
        self.deployment = load(self.settings.home) or self.deployment
        return record

    # -- ledger

    def leased_samples(self) -> int:
        with self.ledger_engine().connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(sample_state.c.lease_owner.is_not(None))).scalar_one())

    def ledger_engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.ledger_url, pool_size=2)
        return self._engine


def airflow_log_tail(path: Path, lines: int = 25) -> str:
    """The end of an Airflow 3 task log (JSON lines) as readable text."""
    out = []
    for line in log_tail(path, lines).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        text = f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')}"
        if entry.get("error_detail"):
            text += f" {json.dumps(entry['error_detail'])[:1500]}"
        out.append(text)
    return "\n".join(out)



@contextmanager
def _postgres_database(name: str) -> Iterator[str]:
    url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    drop_postgres_database(url)  # a leftover of a killed earlier session with the same pid
    ensure_postgres_database(url)
    try:
        yield url
    finally:
        drop_postgres_database(url)


@contextmanager
def production_stack(root: Path, *, tag: str, web: SyntheticWeb, s3: Literal["rclone", "moto"] = "rclone",
                     shards: int = 4, worker_concurrency: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Everything above, started; `web` must be running. Stopped again on the way out, whatever happened."""
    pid = os.getpid()
    with ExitStack() as stack:
        ledger_url = stack.enter_context(_postgres_database(f"taisu_ledger_{tag}_{pid}"))
        s3_server = stack.enter_context(s3_stand_in(s3, root / "s3"))
        metadata_url = sa.engine.make_url(PG_ADMIN_URL).set(
            drivername="postgresql+psycopg2", database=f"taisu_airflow_{tag}_{pid}").render_as_string(hide_password=False)
        prefix = f"taisu-{tag}-{pid}:"
        settings = DeploySettings(
            home=root / "airflow", mode="production", port=free_port(), metadata_url=metadata_url,
            redis_db=1 + pid % 15, broker_key_prefix=prefix, parallelism=4, worker_concurrency=worker_concurrency,
            gpu_concurrency=1, fetch_slots=2, ready_timeout=300,
        )
        taisu = dict(
            TAISU_DB_URL=ledger_url,
            TAISU_STORE="s3",
            TAISU_S3_ENDPOINT=s3_server.endpoint,
            TAISU_S3_ACCESS_KEY=S3_ACCESS_KEY,
            TAISU_S3_SECRET_KEY=S3_SECRET_KEY,
            TAISU_S3_BUCKET=S3_BUCKET,
            TAISU_RECIPE_VERSION=f"e2e-{tag}",
            TAISU_PIPELINE__SHARDS=str(shards),
            TAISU_SCORE__QUEUE="gpu",
            TAISU_CAPTION__QUEUE="gpu",
            TAISU_FETCH__ALLOW_LOOPBACK=json.dumps([web.netloc]),
            TAISU_FETCH__PER_HOST_RATE="500",
            TAISU_FETCH__DEADLINE_S="4",
        )
        env = caller_environment(root / "var", **{**taisu, **(extra_env or {})})

        def cleanup() -> None:
            down(settings.home, grace=15)
            drop_postgres_database(settings.metadata_url)
            drop_redis_keys(settings.broker_url, prefix)

        stack.callback(cleanup)
        deployment = up(settings, env=env)
        result = Stack(settings=settings, deployment=deployment, env=env, ledger_url=ledger_url, s3=s3_server, web=web, root=root)
        stack.callback(lambda: result.ledger_engine().dispose())
        yield result
