"""The production deployment, for real: Airflow's metadata in Postgres, CeleryExecutor on the local
Redis, one Celery worker for the `default` queue and one for `gpu`; a tiny DAG triggered over the
REST API runs one task on each queue and must succeed on the right worker.

The full pipeline end to end on this topology is another test's work; here a two-task DAG in a
folder of its own proves the topology (and the TAISU_* pass-through) in about a minute.
"""

from __future__ import annotations

import os
import textwrap
import time
from typing import Iterator

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.deploy import Deployment, DeploySettings, down, status, up  # noqa: E402
from taisu_etl.deploy.metadata import drop_postgres_database  # noqa: E402
from tests.conftest import PG_ADMIN_URL  # noqa: E402
from tests.deploy.support import caller_environment, drop_redis_keys, free_port, processes_of_home  # noqa: E402

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

SMOKE_DAG = textwrap.dedent('''
    """Two tasks, one per Celery queue; each returns who ran it."""
    from datetime import datetime

    from airflow.sdk import dag, task


    @dag(dag_id="deploy_smoke", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])
    def deploy_smoke():
        @task(queue="default")
        def on_default() -> dict:
            import os

            from taisu_etl.db.context import RunContext

            return {"worker": RunContext().worker, "recipe_version": os.environ.get("TAISU_RECIPE_VERSION")}

        @task(queue="gpu")
        def on_gpu(before: dict) -> dict:
            from taisu_etl.db.context import RunContext

            return {"worker": RunContext().worker, "before": before["worker"]}

        on_gpu(on_default())


    deploy_smoke()
''')


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("production")
    dags = root / "dags"
    dags.mkdir()
    (dags / "deploy_smoke.py").write_text(SMOKE_DAG)
    admin = sa.engine.make_url(PG_ADMIN_URL)
    metadata_url = admin.set(database=f"taisu_airflow_test_{os.getpid()}").render_as_string(hide_password=False)
    prefix = f"taisu-test-{os.getpid()}:"
    settings = DeploySettings(
        home=root / "airflow", mode="production", port=free_port(), dags_folder=dags, metadata_url=metadata_url,
        redis_db=1 + os.getpid() % 15, broker_key_prefix=prefix, parallelism=4, worker_concurrency=1, ready_timeout=300,
    )
    env = caller_environment(root, TAISU_RECIPE_VERSION=f"smoke-{os.getpid()}")
    try:
        yield up(settings, env=env)
    finally:
        down(settings.home, grace=15)
        drop_postgres_database(settings.metadata_url)
        drop_redis_keys(settings.broker_url, prefix)



def test_postgres_celery_and_both_workers_are_up_and_healthy(deployment: Deployment) -> None:
    assert deployment.mode == "production" and not deployment.already_running
    result = status(deployment.home)
    assert result.running and result.healthy, (result.alive, result.health, result.workers_answering)
    assert set(result.alive) == {"api-server", "scheduler", "dag-processor", "triggerer", "worker-default", "worker-gpu"}
    assert result.workers_answering == set(deployment.worker_names.values())


def test_a_dag_run_triggered_over_rest_runs_each_queue_on_its_worker(deployment: Deployment) -> None:
    api = deployment.api()
    deadline = time.monotonic() + 120
    while "deploy_smoke" not in {d["dag_id"] for d in api.dags()}:
        assert time.monotonic() < deadline, "the dag-processor did not register deploy_smoke"
        time.sleep(1)
    run = api.trigger("deploy_smoke")
    assert run["state"] in ("queued", "running")  # unpaused at creation: it does not wait for anyone

    finished = api.wait_for_run("deploy_smoke", run["dag_run_id"], timeout=180)

    states = {ti["task_id"]: ti["state"] for ti in api.task_instances("deploy_smoke", run["dag_run_id"])}
    assert finished["state"] == "success", states
    assert states == {"on_default": "success", "on_gpu": "success"}
    on_default = api.xcom("deploy_smoke", run["dag_run_id"], "on_default")
    on_gpu = api.xcom("deploy_smoke", run["dag_run_id"], "on_gpu")
    assert on_default["worker"].startswith("default@") and on_gpu["worker"].startswith("gpu@"), (on_default, on_gpu)
    assert on_default["recipe_version"] == f"smoke-{os.getpid()}"  # the caller's TAISU_* settings reach the tasks


def test_down_leaves_no_process(deployment: Deployment) -> None:
    down(deployment.home, grace=15)
    assert processes_of_home(deployment.home) == {}
    assert not any(p.alive() for p in deployment.processes)
    assert status(deployment.home).deployment is None
