"""Stages that cannot lie: a crashed run's samples are done by the next run, and samples another live
process holds make a stage fail with who holds them, never succeed with 0.

The crash is real: a `taisu-etl score` process on the project's tiny CLIP is frozen while it holds
leases and killed with SIGKILL, and the command is run again at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from taisu_etl.db.leases import LeaseConflict, LeaseOwner
from taisu_etl.db.ledger import Ledger
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import ImageConfig
from taisu_etl.stages.fetch import fetch_shard
from taisu_etl.stages.model_config import ScoreConfig
from taisu_etl.stages.score import score_shard
from taisu_etl.storage import LocalObjectStore
from taisu_etl.synthweb import SyntheticWeb, make_pairs
from taisu_etl.synthweb.seeding import seed_checked_pairs
from taisu_etl.vocab import State
from tests.db.test_leases import dead_owner
from tests.stages.test_fetch_stage import prepare, write_list


@pytest.fixture(scope="module")
def scorer():  # type: ignore[no-untyped-def]
    from taisu_etl.models import ClipScorer

    return ClipScorer.load(ScoreConfig().model.spec(), device="cpu")


def _cli_env(tmp_path: Path, ledger_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
    env.update(
        TAISU_HOME=str(tmp_path / "home"), TAISU_DB_URL=ledger_url, TAISU_STORE_ROOT=str(tmp_path / "o"),
        # Small chunks in the main process: many claims, each a short piece of work, and no worker
        # processes to outlive the killed one.
        TAISU_SCORE__WORKERS="0", TAISU_SCORE__CHUNK_SIZE="8", TAISU_SCORE__BATCH_SIZE="8", TAISU_SCORE__DEVICE="cpu",
        TAISU_SCORE__STORE_EMBEDDINGS="false", TAISU_PIPELINE__SHARDS="4",
    )
    env.update(extra)
    return env


def _score_events(ledger: Ledger) -> dict[int, int]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sample_id, COUNT(*) FROM sample_event WHERE stage = 'score' GROUP BY sample_id")).all()
    return {i: n for i, n in rows}


def _leased(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT lease_owner, COUNT(*) FROM sample_state WHERE lease_owner IS NOT NULL GROUP BY lease_owner")).all()
    return {o: n for o, n in rows}


def test_a_rerun_right_after_a_sigkilled_score_does_all_the_work_once(ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    ids = seed_checked_pairs(ledger, store, make_pairs(120, seed=41, mismatch_rate=0.2, split="heldout"), size=(64, 64))
    env = _cli_env(tmp_path, ledger_url)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "taisu_etl.cli", "score"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the score command never got going"
            time.sleep(0.05)
            if len(_score_events(ledger)) < 16:
                continue
            # Freeze it, and kill it only in a moment when it holds a claim it has not decided yet.
            os.killpg(proc.pid, signal.SIGSTOP)
            if _leased(ledger):
                break
            os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    decided_before = len(_score_events(ledger))
    held = _leased(ledger)
    assert proc.returncode == -signal.SIGKILL
    assert len(held) == 1 and decided_before < len(ids)
    (owner, n_held), = held.items()
    assert LeaseOwner.parse(owner).pid == proc.pid and LeaseOwner.parse(owner).is_dead()

    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "taisu_etl.cli", "score"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # The dead process's lease (120 s) was broken, not waited out.
    assert time.monotonic() - started < 100
    assert f"broke the leases of {n_held} samples in image_ok held by score@" in res.stderr
    assert f"all shards: {len(ids) - decided_before} pairs" in res.stdout
    per_sample = _score_events(ledger)
    assert sorted(per_sample) == sorted(ids.values()) and set(per_sample.values()) == {1}
    assert ledger.shards_with(State.IMAGE_OK) == [] and _leased(ledger) == {}


def test_samples_a_live_process_holds_fail_the_score_command_with_who_holds_them(
    ledger: Ledger, ledger_url: str, tmp_path: Path,
) -> None:
    store = LocalObjectStore(tmp_path / "o")
    ids = seed_checked_pairs(ledger, store, make_pairs(40, seed=42, mismatch_rate=0.2, split="heldout"), size=(64, 64))
    shard = ledger.shards_with(State.IMAGE_OK)[0]
    holder = LeaseOwner.current(f"score.{shard}.elsewhere")  # this test process: alive while the command runs
    held = ledger.claim(state=State.IMAGE_OK, owner=holder.token, shard=shard, limit=5, lease_seconds=600)
    env = _cli_env(tmp_path, ledger_url, TAISU_PIPELINE__CLAIM_WAIT_SECONDS="2")
    res = subprocess.run([sys.executable, "-m", "taisu_etl.cli", "score"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: score, shard {shard}: 5 samples in image_ok are leased by "
                           f"score@{holder.host}:{os.getpid()} (started "), last
    assert " until 20" in last and "taisu-etl leases release --dead" in last
    # It did all it could: every sample but the held ones was decided, once; the holder keeps its lease.
    per_sample = _score_events(ledger)
    assert sorted(per_sample) == sorted(set(ids.values()) - {r["id"] for r in held}) and set(per_sample.values()) == {1}
    assert _leased(ledger) == {holder.token: 5}


def test_score_waits_for_nothing_when_the_holder_is_dead(ledger: Ledger, tmp_path: Path, scorer) -> None:  # type: ignore[no-untyped-def]
    store = LocalObjectStore(tmp_path / "o")
    ids = seed_checked_pairs(ledger, store, make_pairs(30, seed=43, mismatch_rate=0.2, split="heldout"), size=(64, 64))
    shard = ledger.shards_with(State.IMAGE_OK)[0]
    gone = dead_owner(f"score.{shard}.crashed0")
    ledger.claim(state=State.IMAGE_OK, owner=gone.token, shard=shard, limit=1000, lease_seconds=3600)
    started = time.monotonic()
    report = score_shard(ledger, store, ScoreConfig(workers=0, batch_size=8, store_embeddings=False, device="cpu"),
                         scorer=scorer, claim_wait_seconds=600)
    assert time.monotonic() - started < 60
    assert report.seen == len(ids)
    per_sample = _score_events(ledger)
    assert sorted(per_sample) == sorted(ids.values()) and set(per_sample.values()) == {1}


def test_score_fails_rather_than_reporting_zero_when_a_live_owner_holds_everything(ledger: Ledger, tmp_path: Path, scorer) -> None:  # type: ignore[no-untyped-def]
    store = LocalObjectStore(tmp_path / "o")
    seed_checked_pairs(ledger, store, make_pairs(12, seed=44, split="heldout"), size=(64, 64))
    other = LeaseOwner(host="gpu-node-2", pid=4242, start="0badc0de.123", label="score.0.remote00")  # another machine
    for shard in ledger.shards_with(State.IMAGE_OK):
        ledger.claim(state=State.IMAGE_OK, owner=other.token, shard=shard, limit=1000, lease_seconds=600)
    with pytest.raises(LeaseConflict, match=r"samples in image_ok are leased by score@gpu-node-2:4242 until 20"):
        score_shard(ledger, store, ScoreConfig(workers=0, store_embeddings=False, device="cpu"), scorer=scorer, claim_wait_seconds=0.5)
    assert _score_events(ledger) == {}


def test_fetch_takes_over_a_dead_fetchers_samples(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(12, seed=45)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：山谷里的一条小溪") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        gone = dead_owner("fetch.all.crashed0")
        held = ledger.claim(state=State.TEXT_OK, owner=gone.token, limit=5, lease_seconds=3600)
        settings = FetchSettings(allow_loopback=(web.netloc,), per_host_rate=None, per_host_concurrency=16, deadline_s=3.0,
                                 retry_base_s=0.0, concurrency=8)
        report = fetch_shard(ledger, LocalObjectStore(tmp_path / "o"), settings, ImageConfig(), decode_workers=1,
                             claim_wait_seconds=600)
    assert report.claimed == 12 and report.states["fetched"] == 12
    for r in held:
        assert [e["stage"] for e in ledger.events(r["id"])].count("fetch") == 1
    assert _leased(ledger) == {}
