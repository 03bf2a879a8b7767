"""Process records and stopping, with plain Python processes (no Airflow needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from taisu_etl.deploy.processes import PidRecords, ProcessRecord, log_tail, process_tree, spawn, start_ticks, stop

# A leader that starts one child in its own group and one in its own *process group* (as Airflow's
# task supervisor does with each task), then waits; the children print their pids for the test.
FAMILY = r"""
import os, subprocess, sys, time
same = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
print("PIDS", same.pid, own.pid, flush=True)
time.sleep(600)
"""


def _wait_for_line(log: Path, prefix: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line in {log}: {log.read_text()!r}")


def test_stop_ends_the_leader_its_group_and_children_in_groups_of_their_own(tmp_path: Path) -> None:
    log = tmp_path / "family.log"
    record = spawn("family", [sys.executable, "-c", FAMILY], env=os.environ, cwd=tmp_path, log=log)
    same, own = (int(p) for p in _wait_for_line(log, "PIDS").split()[1:])
    assert os.getpgid(record.pid) == record.pid  # a group of its own: a Ctrl-C of `up` does not reach it
    assert os.getpgid(own) == own != record.pid
    assert set(process_tree(record.pid)) == {record.pid, same, own}

    stopped = stop([record], grace=1.0)  # the child in its own group gets no SIGTERM from the group: SIGKILL after the grace

    assert stopped == [record]
    assert all(start_ticks(pid) is None for pid in (record.pid, same, own))
    assert not record.alive()


def test_stop_uses_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('READY', flush=True); time.sleep(600)"
    record = spawn("stubborn", [sys.executable, "-c", stubborn], env=os.environ, cwd=tmp_path, log=tmp_path / "s.log")
    _wait_for_line(tmp_path / "s.log", "READY")
    began = time.monotonic()
    stop([record], grace=1.0)
    assert not record.alive()
    assert time.monotonic() - began < 10


def test_a_reused_pid_is_neither_alive_nor_signalled(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        ticks = start_ticks(sleeper.pid)
        assert ticks is not None
        # The record of an earlier process that had this pid: same number, another start time.
        stale = ProcessRecord(name="old", pid=sleeper.pid, start_ticks=ticks - 1, command=("old",), log=tmp_path / "x")
        assert not stale.alive()
        assert stop([stale], grace=0.5) == []
        assert start_ticks(sleeper.pid) == ticks  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_zombie_counts_as_dead(tmp_path: Path) -> None:
    record = spawn("quick", [sys.executable, "-c", "pass"], env=os.environ, cwd=tmp_path, log=tmp_path / "q.log")
    deadline = time.monotonic() + 30
    while record.alive() and time.monotonic() < deadline:  # exits, but nobody has waited for it yet
        time.sleep(0.05)
    assert not record.alive()
    try:
        os.waitpid(record.pid, 0)
    except ChildProcessError:  # already collected by subprocess's own clean-up of finished children
        pass


def test_pid_records_round_trip_and_unreadable_files_are_dropped(tmp_path: Path) -> None:
    records = PidRecords(tmp_path / "run")
    one = ProcessRecord(name="scheduler", pid=123, start_ticks=456, command=("airflow", "scheduler"), log=tmp_path / "s.log")
    records.save(one)
    (tmp_path / "run" / "broken.pid.json").write_text("{not json")
    assert records.load() == [one]
    assert not (tmp_path / "run" / "broken.pid.json").exists()
    records.remove(one)
    assert records.load() == []


def test_log_tail_reads_the_end(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert log_tail(log, 3) == "line 9997\nline 9998\nline 9999"
    assert "no log" in log_tail(tmp_path / "missing.log")


def test_stop_finishes_the_group_of_a_leader_that_already_died(tmp_path: Path) -> None:
    log = tmp_path / "family.log"
    record = spawn("family", [sys.executable, "-c", FAMILY], env=os.environ, cwd=tmp_path, log=log)
    same, own = (int(p) for p in _wait_for_line(log, "PIDS").split()[1:])
    os.kill(record.pid, 9)
    try:
        os.waitpid(record.pid, 0)
    except ChildProcessError:
        pass
    assert start_ticks(same) is not None  # orphaned, still in the dead leader's group

    assert stop([record], grace=1.0) == []  # the leader was not running any more

    assert start_ticks(same) is None
    # The child in a group of its own was reparented when the leader died: nothing links it to the
    # record any more, so it is not ours to find; end it here.
    os.kill(own, 9)
