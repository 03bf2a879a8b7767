"""A real Airflow run of the pipeline DAG on embedded defaults (dag.test, SQLite everywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.airflow_local import run_dag  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.storage import LocalObjectStore  # noqa: E402
from tests.sources.builders import jpeg, write_tar  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample" / "wukong_sample.csv"


@pytest.mark.airflow
def test_pipeline_dag_runs_end_to_end_on_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("TAISU_DB_URL", raising=False)
    monkeypatch.setenv("TAISU_PIPELINE__SHARDS", "4")
    archive = write_tar(tmp_path / "baidu_image0.tgz", [("a1.jpg", jpeg(1, 64)), ("a2.jpg", jpeg(2, 64)), ("orphan.jpg", jpeg(3, 64))])
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"a1": {"w": "一只白色的小猫在草地上", "g": "草地上的一只猫"}, "a2": {"w": "图片", "g": None},
                                    "gone": {"w": "没有图片的说明", "g": None}}, ensure_ascii=False))
    conf = {"sources": [str(SAMPLE)], "taisu_archives": [str(archive)], "taisu_captions": [str(captions)]}
    run_dag("taisu_pipeline", conf, tmp_path / "airflow", quiet=True)

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'var' / 'ledger.db'}")
    # Sample CSV: 205 rows, 2 bad (no URL, ftp), 1 respelled duplicate; 160 pass the text rules.
    # TaiSu: a1 passes and skips the fetch stage (its image is stored), a2 is boilerplate.
    assert ledger.funnel() == {"text_ok": 160, "text_rejected": 43, "fetched": 1}
    issues = {(Path(s).name, r): n for s, r, n in ledger.issue_counts()}
    assert issues == {("wukong_sample.csv", "missing_url"): 1, ("wukong_sample.csv", "bad_scheme"): 1,
                      ("baidu_image0.tgz", "no_caption"): 1, ("captions.json", "no_image"): 1}
    with ledger.engine.connect() as conn:
        tasks = conn.execute(sa.text("SELECT DISTINCT dag_id, task_id, map_index FROM sample_event ORDER BY task_id, map_index")).all()
        stored = conn.execute(sa.text("SELECT object_key, gen_caption, gen_caption_model FROM sample WHERE taisu_id = 'a1'")).one()
    assert [tuple(t) for t in tasks] == [("taisu_pipeline", "ingest", 0), ("taisu_pipeline", "ingest_taisu", None)] + [
        ("taisu_pipeline", "text_filter", i) for i in range(4)
    ]
    assert LocalObjectStore(tmp_path / "var" / "objects").exists(stored.object_key)
    assert (stored.gen_caption, stored.gen_caption_model) == ("草地上的一只猫", "taisu-release")
    ledger.dispose()
