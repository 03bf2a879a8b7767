"""Every DAG file imports cleanly, without touching a database or the network while parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.airflow_local import DAGS_FOLDER, airflow_env  # noqa: E402

PARSE = r"""
import socket, sys
def refuse(*a, **k):
    raise RuntimeError("DAG parsing opened a network connection")
socket.socket.connect = refuse
socket.create_connection = refuse
import taisu_etl.db.engine as eng, taisu_etl.services as svc
def no_db(*a, **k):
    raise RuntimeError("DAG parsing opened the ledger")
eng.make_engine = svc.open_ledger = svc.open_store = no_db
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
for path, err in bag.import_errors.items():
    print("IMPORT ERROR", path, err)
print("DAGS", sorted(bag.dag_ids))
for dag_id in bag.dag_ids:
    dag = bag.dags[dag_id]  # get_dag() would read Airflow's metadata database
    print("CHECK", dag_id, bool(dag.doc_md), sorted(dag.tags), dag.catchup)
sys.exit(1 if bag.import_errors else 0)
"""


def test_dag_files_parse_without_database_or_network(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", PARSE, str(DAGS_FOLDER)], env=airflow_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DAGS ['taisu_pipeline', 'taisu_recheck', 'taisu_release']" in res.stdout
    assert "CHECK taisu_pipeline True ['taisu'] False" in res.stdout
    assert "CHECK taisu_recheck True ['taisu'] False" in res.stdout


def test_dag_files_import_only_the_sdk() -> None:
    for path in DAGS_FOLDER.glob("*.py"):
        text = path.read_text()
        assert "from airflow.sdk import" in text, path
        assert "from airflow.models" not in text and "from airflow.decorators" not in text, path
