"""A real Airflow run of the DAGs on embedded defaults (dag.test, SQLite everywhere): the pipeline,
its asset event, the release with and without a name, a re-run that finds nothing new, and the
maintenance DAG's dry run and sweep."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.airflow_local import run_dag  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.storage import LocalObjectStore  # noqa: E402
from taisu_etl.demo import demo_web, write_demo_sources  # noqa: E402
from taisu_etl.tasks import RELEASABLE_SAMPLES_URI  # noqa: E402
from tests.sources.builders import jpeg, write_tar  # noqa: E402


def _airflow_db(home: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{home / 'airflow.db'}")


def _asset_events(home: Path) -> list[dict]:
    """The events Airflow recorded on the asset that starts taisu_release."""
    with _airflow_db(home).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT e.source_dag_id, e.source_task_id, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = :uri ORDER BY e.id"), {"uri": RELEASABLE_SAMPLES_URI}).mappings().all()
    return [{**r, "extra": json.loads(r["extra"]) if isinstance(r["extra"], str) else r["extra"]} for r in rows]


def _task_states(home: Path, dag_id: str) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(task, map index) -> (state, label) of the latest run of `dag_id`."""
    with _airflow_db(home).connect() as conn:
        run_id = conn.execute(sa.text("SELECT run_id FROM dag_run WHERE dag_id = :d ORDER BY id DESC LIMIT 1"), {"d": dag_id}).scalar_one()
        rows = conn.execute(sa.text("SELECT task_id, map_index, state, rendered_map_index FROM task_instance "
                                    "WHERE dag_id = :d AND run_id = :r"), {"d": dag_id, "r": run_id}).all()
    return {(t, m): (state, label) for t, m, state, label in rows}


@pytest.mark.airflow
def test_pipeline_dag_runs_end_to_end_on_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("TAISU_DB_URL", raising=False)
    monkeypatch.setenv("TAISU_PIPELINE__SHARDS", "4")
    archive = write_tar(tmp_path / "baidu_image0.tgz", [("a1.jpg", jpeg(1, 256)), ("a2.jpg", jpeg(2, 256)), ("orphan.jpg", jpeg(3, 64))])
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"a1": {"w": "一只白色的小猫在草地上", "g": "草地上的一只猫"}, "a2": {"w": "图片", "g": None},
                                    "gone": {"w": "没有图片的说明", "g": None}}, ensure_ascii=False))
    with demo_web(pairs=20, seed=11) as web:
        sources = write_demo_sources(web, tmp_path / "lists", pairs=20, seed=11)
        monkeypatch.setenv("TAISU_FETCH__ALLOW_LOOPBACK", json.dumps([web.netloc]))
        monkeypatch.setenv("TAISU_FETCH__PER_HOST_RATE", "500")
        monkeypatch.setenv("TAISU_FETCH__DEADLINE_S", "4")
        conf = {"sources": [str(p) for p in sources], "taisu_archives": [str(archive)], "taisu_captions": [str(captions)]}
        run_dag("taisu_pipeline", conf, tmp_path / "airflow", quiet=True)

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'var' / 'ledger.db'}")
    funnel = ledger.funnel()
    reasons = {(state, reason) for state, reason, _ in ledger.reason_counts()}
    # 20 synthetic pairs + 13 noisy captions + 15 hostile URLs + 1 robots-disallowed + 2 TaiSu images.
    assert sum(funnel.values()) == 20 + 13 + 15 + 1 + 2
    assert funnel["text_rejected"] == 13 + 1  # the noisy captions, and TaiSu's "图片"
    # Synthetic pairs, exif-rotated, TaiSu a1: each checked, then scored, and captioned if accepted.
    after_checks = ("image_ok", "duplicate", "score_rejected", "accepted", "captioned")
    assert sum(funnel.get(s, 0) for s in after_checks) == 20 + 1 + 1
    assert funnel.get("image_ok", 0) == funnel.get("accepted", 0) == 0  # every stage ran to the end
    assert funnel["captioned"] >= 12 and ("score_rejected", "retrieval_miss") in reasons
    assert {("expired", "http_404"), ("expired", "http_410"), ("fetch_failed", "blocked_address"), ("fetch_failed", "noai_header"),
            ("fetch_failed", "robots_disallow"), ("fetch_failed", "too_many_pixels"), ("image_rejected", "too_small"),
            ("image_rejected", "bad_aspect")} <= reasons
    issues = {(Path(s).name, r): n for s, r, n in ledger.issue_counts()}
    assert issues == {("baidu_image0.tgz", "no_caption"): 1, ("captions.json", "no_image"): 1}
    with ledger.engine.connect() as conn:
        tasks = {tuple(t) for t in conn.execute(sa.text("SELECT DISTINCT dag_id, task_id, map_index FROM sample_event"))}
        stored = conn.execute(sa.text("SELECT object_key, gen_caption, gen_caption_model, width FROM sample WHERE taisu_id = 'a1'")).one()
    assert {t for _, t, _ in tasks} == {"ingest", "ingest_taisu", "text_filter", "fetch", "dedup", "score", "caption"}
    assert {m for _, t, m in tasks if t == "text_filter"} == set(range(4))  # one mapped task per shard
    assert LocalObjectStore(tmp_path / "var" / "objects").exists(stored.object_key)
    assert (stored.gen_caption, stored.gen_caption_model, stored.width) == ("草地上的一只猫", "taisu-release", 256)

    # Mapped tasks carry their shard's (or file's) name; the run announced its new samples once.
    home = tmp_path / "airflow"
    states = _task_states(home, "taisu_pipeline")
    assert {states[("text_filter", i)][1] for i in range(4)} == {f"shard {i}" for i in range(4)}
    assert {label for (task, _), (_, label) in states.items() if task == "ingest"} == {"file synthetic_web.csv", "file noisy_captions.csv"}
    assert states[("announce_new_samples", -1)][0] == "success"
    events = _asset_events(home)
    assert len(events) == 1 and events[0]["source_dag_id"] == "taisu_pipeline"
    assert events[0]["extra"]["accepted"] == events[0]["extra"]["captioned"] == funnel["captioned"]

    # The release DAG publishes what the pipeline accepted; verify re-reads it against the ledger.
    run_dag("taisu_release", {"name": "t1", "tgz": True, "shard_size": 5}, tmp_path / "airflow", quiet=True)
    from taisu_etl.release import read_manifest, verify_release

    store = LocalObjectStore(tmp_path / "var" / "objects")
    manifest = read_manifest(store, "t1")
    assert manifest is not None and manifest["counts"]["samples"] == funnel["captioned"]
    assert verify_release(store, "t1", ledger=ledger).ok
    assert store.exists("releases/t1/README.md")

    # With nothing filled in (as an asset-triggered run has it), the release is named after its run.
    run_dag("taisu_release", {}, home, quiet=True)
    with ledger.engine.connect() as conn:
        named = conn.execute(sa.text("SELECT name FROM release ORDER BY id DESC LIMIT 1")).scalar_one()
    assert re.fullmatch(r"taisu-\d{8}-\d{6}", named)
    manifest = read_manifest(store, named)
    assert manifest is not None and manifest["counts"]["samples"] == funnel["captioned"] and manifest["recipe"]["parent"] == "t1"

    # A second run of the same sources finds nothing new: the empty stages are skipped, and the
    # funnel still runs (it does not inherit the skips).
    before = ledger.funnel()
    rerun_log = tmp_path / "rerun.log"
    run_dag("taisu_pipeline", {"sources": conf["sources"]}, tmp_path / "airflow", quiet=True, log_path=rerun_log)
    assert ledger.funnel() == before
    assert re.search(r"end task task_id=funnel ", rerun_log.read_text(encoding="utf-8"))
    # Nothing became releasable: the announcing task is skipped, and Airflow records no event.
    assert _task_states(home, "taisu_pipeline")[("announce_new_samples", -1)][0] == "skipped"
    assert len(_asset_events(home)) == 1

    # Maintenance: an image no sample names, written 7 hours ago (a fetch that died before its
    # ledger write), is listed by a dry run and deleted by the scheduled (default) run; a fresh one
    # is within the grace period; everything the ledger or a release uses stays.
    old = store.put_image(jpeg(77, 64)).key
    stale = time.time() - 7 * 3600
    os.utime(tmp_path / "var" / "objects" / old, (stale, stale))
    fresh = store.put_image(jpeg(78, 64)).key
    run_dag("taisu_maintenance", {"dry_run": True}, home, quiet=True)
    assert store.exists(old) and store.exists(fresh)
    run_dag("taisu_maintenance", {}, home, quiet=True)
    assert not store.exists(old) and store.exists(fresh)
    assert _task_states(home, "taisu_maintenance")[("remove_orphan_images", -1)][0] == "success"
    with ledger.engine.connect() as conn:
        keys = [k for (k,) in conn.execute(sa.text("SELECT object_key FROM sample WHERE object_key IS NOT NULL"))]
    assert keys and all(store.exists(k) for k in keys)
    assert verify_release(store, "t1", ledger=ledger).ok and verify_release(store, named, ledger=ledger).ok

    # Takedown from the trigger form: one sample of both releases goes from the store, from both
    # releases (version 2 of each) and onto the blocklist; the run verifies it and says so.
    member = store.get("releases/t1/ids.txt").decode().split()[0]
    run_dag("taisu_takedown", {"kind": "sample", "value": member, "requester": "Rights Co", "reference": "mail-1"}, home, quiet=True)
    states = _task_states(home, "taisu_takedown")
    assert {t: s for (t, _), (s, _) in states.items()} == {"file_request": "success", "process": "success", "verify": "success"}
    with ledger.engine.connect() as conn:
        status, channel = conn.execute(sa.text("SELECT status, channel FROM takedown_request")).one()
        versions = dict(conn.execute(sa.text("SELECT name, version FROM release")).all())
        # One URL can carry several captions (several samples, one url_id): the request covers them all.
        keys = {k for (k,) in conn.execute(sa.text("SELECT object_key FROM sample WHERE url_id = :u"), {"u": member})}
    assert (status, channel) == ("verified", "airflow") and versions == {"t1": 2, named: 2}
    assert keys and not any(k and store.exists(k) for k in keys)
    assert member not in store.get("releases/t1/ids.txt").decode() and member in store.get("releases/t1/removed.txt").decode()
    assert verify_release(store, "t1", ledger=ledger).ok and verify_release(store, named, ledger=ledger).ok
    # The scheduled run (empty form) processes what was queued from the command line, and has nothing else to do.
    second = store.get("releases/t1/ids.txt").decode().split()[0]
    from taisu_etl.takedown.requests import file_request

    rid = file_request(ledger, "sample", second, requester="Agency")
    run_dag("taisu_takedown", {}, home, quiet=True)
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM takedown_request WHERE id = :i"), {"i": rid}).scalar_one() == "verified"
    assert second not in store.get("releases/t1/ids.txt").decode()
    ledger.dispose()
