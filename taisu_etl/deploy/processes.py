"""Start, recognise and stop the deployment's processes (Linux: reads /proc).

A process is recorded by pid *and* its start time (clock ticks after boot, /proc/PID/stat field
22): once a process has exited its pid may be reused by an unrelated one, which must then count
as dead, never be signalled. Each process starts in a session and process group of its own
(`start_new_session`), so a Ctrl-C in the terminal that ran `up` does not reach it and `stop`
can signal the group. Airflow's task supervisor moves each task process into a group of its own
(`os.setpgid(0, 0)` in airflow.sdk.execution_time.supervisor), so `stop` also snapshots the whole
tree of descendants before signalling and finishes off whatever of it outlives the group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from taisu_etl.procfs import start_ticks, stat_fields

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessRecord:
    """One started process: what it is, who it is (pid + start time), and where it logs."""

    name: str
    pid: int
    start_ticks: int
    command: tuple[str, ...]
    log: Path

    def to_json(self) -> str:
        data = asdict(self)
        data["log"] = str(self.log)
        data["command"] = list(self.command)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ProcessRecord":
        data = json.loads(text)
        return cls(name=str(data["name"]), pid=int(data["pid"]), start_ticks=int(data["start_ticks"]),
                   command=tuple(data["command"]), log=Path(data["log"]))

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def process_tree(pid: int) -> dict[int, int]:
    """`pid`, its descendants and its process group's members, alive now: pid -> start ticks."""
    children = _children_map()
    found: dict[int, int] = {}
    todo = [pid, *_group_members(pid)]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        ticks = start_ticks(current)
        if ticks is None:
            continue
        found[current] = ticks
        todo.extend(children.get(current, ()))
    return found


def spawn(name: str, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> ProcessRecord:
    """Start `command` in a new session, its output appended to `log`; return its record."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    ticks = start_ticks(proc.pid)
    if ticks is None:  # it died at once; its record still names it so the caller can show the log
        ticks = -1
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, command=tuple(command), log=log)


def _signal(pid: int, ticks: int, sig: int) -> None:
    if start_ticks(pid) != ticks:
        return  # gone, or the pid now belongs to another process
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    """Collect the exit status of our own children, so they do not linger as zombies."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop(records: Sequence[ProcessRecord], *, grace: float = 30.0) -> list[ProcessRecord]:
    """Stop the recorded processes and everything they started: SIGTERM the groups, wait, SIGKILL.

    Returns the records of the processes that were still running (the others had exited). A
    recorded process that exited may have left members of its group behind (no process holds its
    pid, yet its group lives on: Linux reuses no pid while a group of that id exists); those are
    stopped too, and only those started after it.
    """
    live = [r for r in records if r.alive()]
    tree: dict[int, int] = {}
    orphans: dict[int, int] = {}
    for record in records:
        if record.alive():
            tree.update(process_tree(record.pid))
        elif start_ticks(record.pid) is None:
            orphans.update({pid: ticks for pid, ticks in process_tree(record.pid).items() if ticks >= record.start_ticks})
    tree.update(orphans)
    for record in live:
        try:
            os.killpg(record.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            _signal(record.pid, record.start_ticks, signal.SIGTERM)
    for pid, ticks in orphans.items():
        _signal(pid, ticks, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(r.pid for r in live)
        for record in live:  # children started while shutting down belong to the tree as well
            if record.alive():
                tree.update(process_tree(record.pid))
        if not any(start_ticks(pid) == ticks for pid, ticks in tree.items()):
            break
        time.sleep(0.2)
    for record in live:
        if record.alive():
            try:
                os.killpg(record.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for pid, ticks in tree.items():
        _signal(pid, ticks, signal.SIGKILL)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(start_ticks(pid) == ticks for pid, ticks in tree.items()):
        _reap(r.pid for r in live)
        time.sleep(0.1)
    _reap(r.pid for r in live)
    return live


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file (the end of a big file is read, not all of it)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class PidRecords:
    """The pid records of one deployment: one JSON file per process in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pid.json"

    def save(self, record: ProcessRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(record.name).with_suffix(".tmp")
        tmp.write_text(record.to_json())
        tmp.replace(self.path(record.name))

    def load(self) -> list[ProcessRecord]:
        """Every readable record, in start order; an unreadable file is removed (it can prove nothing)."""
        records = []
        for path in sorted(self.folder.glob("*.pid.json")) if self.folder.is_dir() else []:
            try:
                records.append(ProcessRecord.from_json(path.read_text()))
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
        return sorted(records, key=lambda r: r.start_ticks)

    def remove(self, record: ProcessRecord) -> None:
        self.path(record.name).unlink(missing_ok=True)
