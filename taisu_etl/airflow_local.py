"""Run a DAG of this project end to end on this machine with Airflow's own `dag.test()`.

Used by `taisu-etl demo` and the tests: Airflow gets a home and a SQLite metadata database under
`<TAISU_HOME>/airflow`, and our `dags/` folder; nothing else about the machine is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from taisu_etl.errors import TaisuError

DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"


def airflow_env(home: Path) -> dict[str, str]:
    home = home.resolve()
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        HF_HUB_OFFLINE="1",
    )
    return env


def run_dag(dag_id: str, conf: dict[str, Any], home: Path, *, quiet: bool = False) -> None:
    """Run one DAG to completion in a child process; raise TaisuError if any task failed."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    if not (home / "airflow.db").exists():
        airflow = Path(sys.executable).with_name("airflow")
        res = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise TaisuError(f"airflow db migrate failed in {home}: {res.stderr.strip().splitlines()[-1:]}")
        # The fetch tasks run in this pool (slots = how many shards download at once).
        subprocess.run([str(airflow), "pools", "set", "fetch", "2", "downloads"], env=env, capture_output=True, text=True, check=True)
    cmd = [sys.executable, "-m", "taisu_etl.airflow_local", dag_id, json.dumps(conf)]
    res = subprocess.run(cmd, env=env, capture_output=quiet, text=True)
    if res.returncode != 0:
        tail = (res.stderr or "").strip().splitlines()[-3:] if quiet else []
        raise TaisuError(f"DAG {dag_id} did not succeed (see the task logs above){': ' + ' | '.join(tail) if tail else ''}")


def _child(dag_id: str, conf_json: str) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"import error in {path}: {err}", file=sys.stderr)
        return 1
    dag = bag.dags.get(dag_id)
    if dag is None:
        print(f"no DAG {dag_id!r} in {DAGS_FOLDER}", file=sys.stderr)
        return 1
    run = dag.test(run_conf=json.loads(conf_json))
    state = str(getattr(run, "state", "unknown"))
    print(f"DAG {dag_id} run {getattr(run, 'run_id', '?')}: {state}")
    return 0 if state.endswith("success") else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
