"""A real Airflow run of the pipeline DAG on embedded defaults (dag.test, SQLite everywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.airflow_local import run_dag  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample" / "wukong_sample.csv"


@pytest.mark.airflow
def test_pipeline_dag_runs_end_to_end_on_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("TAISU_DB_URL", raising=False)
    monkeypatch.setenv("TAISU_PIPELINE__SHARDS", "4")
    run_dag("taisu_pipeline", {"sources": [str(SAMPLE)]}, tmp_path / "airflow", quiet=True)

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'var' / 'ledger.db'}")
    funnel = ledger.funnel()
    assert sum(funnel.values()) == 202  # 205 rows: 2 bad (no URL, ftp) and 1 respelled duplicate
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT DISTINCT dag_id, task_id, map_index FROM sample_event")).all()
    assert [tuple(r) for r in rows] == [("taisu_pipeline", "ingest", 0)]
    ledger.dispose()
