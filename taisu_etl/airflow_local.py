"""Run a DAG of this project end to end on this machine with Airflow's own `dag.test()`.

Used by `taisu-etl demo` and the tests: Airflow gets a home and a SQLite metadata database under
`<TAISU_HOME>/airflow`, and our `dags/` folder; nothing else about the machine is touched.
"""

from __future__ import annotations

import json
import os
import re
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


_TASK_DONE = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")


def run_dag(dag_id: str, conf: dict[str, Any], home: Path, *, quiet: bool = False, log_path: Path | None = None) -> None:
    """Run one DAG to completion in a child process; raise TaisuError if any task failed.

    Airflow's own output goes to `log_path` (default `<home>/<dag_id>.log`); unless `quiet`, one
    line per finished task is printed, so a person sees progress without Airflow's log flood.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    if not (home / "airflow.db").exists():
        airflow = Path(sys.executable).with_name("airflow")
        res = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise TaisuError(f"airflow db migrate failed in {home}: {res.stderr.strip().splitlines()[-1:]}")
        # The fetch tasks run in this pool (slots = how many shards download at once).
        subprocess.run([str(airflow), "pools", "set", "fetch", "2", "downloads"], env=env, capture_output=True, text=True, check=True)
    log_path = log_path or home / f"{dag_id}.log"
    cmd = [sys.executable, "-m", "taisu_etl.airflow_local", dag_id, json.dumps(conf)]
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-20:]
            done = _TASK_DONE.search(line)
            if done and not quiet:
                task, index = done.groups()
                print(f"  done: {task}" + (f" [{index}]" if index != "-1" else ""), flush=True)
        code = proc.wait()
    if code != 0:
        shown = "\n".join(tail[-8:]) if not quiet else " | ".join(tail[-3:])
        raise TaisuError(f"DAG {dag_id} did not succeed; the whole log is in {log_path}; its end:\n{shown}")


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
