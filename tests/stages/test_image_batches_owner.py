"""A score or caption command killed with SIGKILL leaves none of its image workers behind.

Found by bench/soak.py: a `ProcessPoolExecutor` worker holds both ends of its call queue, so it
never noticed its owner's death, and kept the fork server and the resource tracker alive with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from taisu_etl.procfs import stat_fields

# Brings a one-worker pool up, then dies the way an OOM kill or a task killed on timeout ends a command.
_COMMAND = r"""
import os, signal, sys
import numpy as np
from taisu_etl.stages.image_batches import ImageBatches
from taisu_etl.storage import LocalObjectStore

with ImageBatches(LocalObjectStore(sys.argv[1]), [np.asarray], batch_size=4, workers=1) as batches:
    list(batches([{"id": 1, "object_key": None}]))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _group(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            alive.append(int(entry))
    return alive


def test_workers_end_when_their_owner_is_killed(tmp_path: Path) -> None:
    # Output to a file: the processes that outlive the command would hold a pipe open.
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _COMMAND, str(tmp_path)], start_new_session=True, cwd=tmp_path, stderr=err)
    left: list[int] = []
    try:
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text(errors="replace")[-2000:]
        deadline = time.monotonic() + 15
        while (left := _group(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"{len(left)} processes of the killed command still run: its pool's worker, fork server, resource tracker"
    finally:
        for pid in _group(proc.pid):  # only this test's own processes: the group it started
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
