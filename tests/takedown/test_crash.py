"""A takedown process killed with SIGKILL half-way (after the samples were taken down, with some of
the objects deleted) is completed by a re-run: every object gone, one event per sample, verified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import takedown_request
from taisu_etl.storage import LocalObjectStore
from taisu_etl.takedown.process import process_request
from taisu_etl.takedown.requests import file_request

from .support import CONFIG, add_stored, events_of, photo, state_of

# Runs the real processing in a child; the child deletes the first image, then SIGKILLs itself.
CHILD = r"""
import os, signal, sys
from taisu_etl.db.ledger import Ledger
from taisu_etl.storage import LocalObjectStore
from taisu_etl.takedown import objects
from taisu_etl.takedown.process import process_request

real = objects.delete_images
def delete_then_die(store, keys, **kw):
    real(store, keys[:1])
    os.kill(os.getpid(), signal.SIGKILL)
objects.delete_images = delete_then_die
ledger = Ledger.open(sys.argv[1])
process_request(ledger, LocalObjectStore(sys.argv[2]), int(sys.argv[3]), max_distance=int(sys.argv[4]))
"""


def test_sigkill_mid_request_then_rerun_completes(ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root)
    # One domain, three images: the request takes all three.
    stored = [add_stored(ledger, store, f"http://pics.example.com/{i}.jpg", photo(90 + i), caption=f"第{i}张城市夜景") for i in range(3)]
    rid = file_request(ledger, "domain", "pics.example.com", requester="Pics Inc")
    child = subprocess.run([sys.executable, "-c", CHILD, ledger_url, str(root), str(rid), str(CONFIG.phash_distance)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr[-2000:]
    left = [s for s in stored if store.exists(s.key)]
    assert len(left) == 2  # killed after the first delete
    assert all(state_of(ledger, s.sample_id) == "taken_down" for s in stored)  # the commit before the deletes held
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(takedown_request.c.status).where(takedown_request.c.id == rid)).scalar_one() == "matched"

    report = process_request(ledger, store, rid, max_distance=CONFIG.phash_distance)
    assert report.ok and report.status == "verified", report.summary()
    assert not any(store.exists(s.key) for s in stored)
    for s in stored:
        assert [e for e in events_of(ledger, s.sample_id) if e[0] == "takedown"] == [("takedown", "taken_down", "takedown")]
