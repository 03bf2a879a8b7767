"""`up`/`status`/`down` of the embedded deployment (SQLite metadata, LocalExecutor), for real.

One deployment for the whole module (30-60 s to start on two cores); the `down` test stops it (the
fixture stops it again whatever happened), and the last test makes an `up` fail on the same home.
On it, the pipeline runs on the embedded defaults (SQLite ledger, local object store) under the
LocalExecutor's task processes, as `make airflow` runs it for a user.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.demo import demo_web, write_demo_sources  # noqa: E402
from taisu_etl.deploy import DeployError, Deployment, DeploySettings, down, status, up  # noqa: E402
from taisu_etl.deploy.api import AirflowApi, ApiError  # noqa: E402
from taisu_etl.deploy.processes import PidRecords, process_tree, spawn, start_ticks  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb  # noqa: E402
from tests.deploy.stack import airflow_log_tail  # noqa: E402
from tests.deploy.support import (  # noqa: E402
    caller_environment,
    children_of,
    free_port,
    listening_addresses,
    processes_of_home,
)

pytestmark = pytest.mark.airflow

PROJECT_DAGS = {"taisu_pipeline", "taisu_release", "taisu_recheck"}
PROCESSES = {"api-server", "scheduler", "dag-processor", "triggerer"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded") / "airflow"


@pytest.fixture(scope="module")
def settings(home: Path) -> DeploySettings:
    return DeploySettings(home=home, port=free_port(), fetch_slots=3, parallelism=2, ready_timeout=300)


PAIRS, SEED, SHARDS = 12, 7, 2


@pytest.fixture(scope="module")
def web() -> Iterator[SyntheticWeb]:
    with demo_web(pairs=PAIRS, seed=SEED) as served:
        yield served


def _pipeline_environment(home: Path, web: SyntheticWeb) -> dict[str, str]:
    """Embedded defaults under `home.parent`, with the synthetic web allowlisted (as the demo does)."""
    return caller_environment(home.parent, TAISU_FETCH__ALLOW_LOOPBACK=json.dumps([web.netloc]), TAISU_FETCH__PER_HOST_RATE="500",
                              TAISU_FETCH__DEADLINE_S="4", TAISU_PIPELINE__SHARDS=str(SHARDS))


@pytest.fixture(scope="module")
def deployment(settings: DeploySettings, home: Path, web: SyntheticWeb) -> Iterator[Deployment]:
    lines: list[str] = []
    try:
        started = up(settings, env=_pipeline_environment(home, web), echo=lines.append)
        assert not started.already_running
        yield started
    finally:
        down(home, grace=15)


def test_status_lists_every_process_alive_and_airflow_healthy(deployment: Deployment, settings: DeploySettings) -> None:
    result = status(settings.home)
    assert set(result.alive) == PROCESSES and all(result.alive.values())
    assert result.healthy, result.health
    assert all(p.log.is_file() and p.log.parent == settings.home / "logs" for p in deployment.processes)
    assert listening_addresses(settings.port) == {"0100007F"}  # 127.0.0.1 only
    assert deployment.ready_seconds is not None and deployment.ready_seconds < settings.ready_timeout


def test_a_second_up_starts_nothing_and_says_where_it_runs(deployment: Deployment, settings: DeploySettings) -> None:
    before = children_of(os.getpid())  # what `up` starts is a child of the process that called it
    again = up(settings, env=caller_environment(settings.home.parent))
    assert again.already_running and again.url == deployment.url
    assert [(p.name, p.pid, p.start_ticks) for p in again.processes] == \
           [(p.name, p.pid, p.start_ticks) for p in deployment.processes]
    assert children_of(os.getpid()) == before
    assert {p.pid for p in deployment.processes} <= before


def test_the_rest_api_shows_the_dags_unpaused_and_the_fetch_pool(deployment: Deployment) -> None:
    api = deployment.api()  # logs in: POST /auth/token with the admin password from its file
    deadline = time.monotonic() + 180
    dags: dict[str, dict] = {}
    while time.monotonic() < deadline:
        dags = {d["dag_id"]: d for d in api.dags()}
        if PROJECT_DAGS <= set(dags):
            break
        time.sleep(2)
    assert PROJECT_DAGS <= set(dags), f"the dag-processor did not register {PROJECT_DAGS - set(dags)} in time"
    assert not any(d["is_paused"] for d in dags.values()), {k: d["is_paused"] for k, d in dags.items()}
    pool = api.pool("fetch")
    assert pool is not None and pool["slots"] == 3
    with pytest.raises(ApiError) as denied:
        AirflowApi(deployment.url, "admin", "not-the-password").dags()
    assert denied.value.status == 401


def test_the_pipeline_runs_on_the_local_executor(deployment: Deployment, settings: DeploySettings, home: Path,
                                                 web: SyntheticWeb) -> None:
    # Every stage, score and caption included, in the LocalExecutor's task processes: their image
    # workers must start there as they do under the CLI, dag.test() and a Celery worker.
    sources = write_demo_sources(web, home.parent / "lists", pairs=PAIRS, seed=SEED)
    api = deployment.api()
    deadline = time.monotonic() + 180
    while "taisu_pipeline" not in {d["dag_id"] for d in api.dags()}:
        assert time.monotonic() < deadline, "the dag-processor did not register taisu_pipeline in time"
        time.sleep(2)
    run_id = api.trigger("taisu_pipeline", {"sources": [str(p) for p in sources]})["dag_run_id"]
    run = api.wait_for_run("taisu_pipeline", run_id, timeout=600)
    tis = api.task_instances("taisu_pipeline", run_id)
    if run["state"] != "success":
        logs = sorted((settings.logs_dir / "dag_id=taisu_pipeline").rglob("attempt=*.log"))
        failed = "\n".join(f"--- {p.relative_to(settings.logs_dir)}\n{airflow_log_tail(p, 20)}" for p in logs[-4:])
        pytest.fail(f"taisu_pipeline is {run['state']}: {[(t['task_id'], t['map_index'], t['state']) for t in tis]}\n{failed}")
    assert {t["state"] for t in tis} == {"success"}, [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    mapped = {(t["task_id"], t["rendered_map_index"]) for t in tis if t["map_index"] >= 0}
    for stage in ("text_filter", "fetch", "dedup", "score", "caption"):
        assert {label for task, label in mapped if task == stage} <= {f"shard {n}" for n in range(SHARDS)}
        assert any(task == stage for task, _ in mapped), f"no {stage} task ran"

    ledger = Ledger.open(f"sqlite:///{home.parent / 'ledger.db'}")
    try:
        funnel = ledger.funnel()
        assert not {"ingested", "text_ok", "fetched", "image_ok", "accepted"} & set(funnel), funnel
        assert funnel.get("captioned", 0) >= PAIRS // 2, funnel
        with ledger.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT stage, dag_id, run_id, task_id, map_index, try_number, count(*) FROM sample_event "
                "WHERE stage IN ('score', 'caption') GROUP BY 1, 2, 3, 4, 5, 6").all()
            leased = conn.exec_driver_sql("SELECT count(*) FROM sample_state WHERE lease_owner IS NOT NULL").scalar_one()
    finally:
        ledger.dispose()
    assert {r[0] for r in rows} == {"score", "caption"}
    assert all(r[1] == "taisu_pipeline" and r[2] == run_id and r[3] == r[0] and r[4] in range(SHARDS) and r[5] == 1
               for r in rows), rows
    assert leased == 0


def test_up_refuses_a_taken_port_and_cleans_stale_records(tmp_path: Path, deployment: Deployment) -> None:
    other = DeploySettings(home=tmp_path / "airflow", port=free_port())
    ghost = spawn("scheduler", ["true"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log=tmp_path / "ghost.log")
    PidRecords(other.run_dir).save(ghost)
    (other.run_dir / "deployment.json").write_text(json.dumps({"mode": "embedded", "url": "http://127.0.0.1:1", "port": 1,
                                                               "started_at": 0, "password_file": "x"}))
    deadline = time.monotonic() + 30
    while ghost.alive() and time.monotonic() < deadline:  # the recorded process is gone: its record must be dropped
        time.sleep(0.05)
    said: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", other.port))
        taken.listen()
        with pytest.raises(DeployError, match=f"port {other.port} on 127.0.0.1 is taken"):
            up(other, env=caller_environment(tmp_path), echo=said.append)
    assert any("removed the records" in line for line in said)
    assert PidRecords(other.run_dir).load() == [] and not (other.run_dir / "deployment.json").exists()
    assert processes_of_home(other.home) == {}


def test_down_stops_everything_it_started_and_forgets_it(deployment: Deployment, settings: DeploySettings) -> None:
    tracked: dict[int, int] = {}
    for record in deployment.processes:
        tracked.update(process_tree(record.pid))
    marked = processes_of_home(settings.home)  # (a process that sets its title may have overwritten its environment)
    assert set(marked) <= set(tracked), "a process with the deployment's AIRFLOW_HOME is not in the tree of any recorded one"

    recorded, stopped = down(settings.home, grace=15)

    assert recorded is not None and {p.name for p in stopped} == PROCESSES
    survivors = {pid for pid, ticks in {**tracked, **marked}.items() if start_ticks(pid) == ticks}
    assert not survivors, "processes of the deployment outlived `down`"
    assert processes_of_home(settings.home) == {}
    assert PidRecords(settings.run_dir).load() == []
    assert status(settings.home).deployment is None
    assert down(settings.home) == (None, [])


def test_an_up_that_fails_stops_what_it_started_and_names_the_process(settings: DeploySettings) -> None:
    # Runs after `down`, on the same (already migrated) home: an api-server that cannot start.
    broken = replace(settings, port=free_port(), overrides={"api.workers": "many"})
    with pytest.raises(DeployError) as failed:
        up(broken, env=caller_environment(settings.home.parent))
    message = str(failed.value)
    assert message.startswith("the api-server process exited during start-up")
    assert "invalid int value: 'many'" in message  # the end of its log
    assert processes_of_home(settings.home) == {}
    assert PidRecords(settings.run_dir).load() == [] and status(settings.home).deployment is None
