"""CPU seconds of processes, read from /proc (Linux): what bench/fetch.py charges to each tool.

    from proc_cpu import NewProcessesCpu, cpu_seconds
    with NewProcessesCpu() as cpu:
        subprocess.run([...])
    cpu.seconds, cpu.postgres_seconds
"""

from __future__ import annotations

import os
import threading


_TICK = os.sysconf("SC_CLK_TCK")


def _parse_stat(text: str) -> tuple[str, int, float]:
    """(name, parent pid, user + system CPU seconds) from the text of /proc/<pid>/stat."""
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return _parse_stat(f.read())[2]


def _snapshot() -> dict[int, tuple[str, int, float]]:
    """Every process's (name, parent pid, CPU seconds), from one pass over /proc."""
    out: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = _parse_stat(f.read())
            except (OSError, ValueError, IndexError):
                continue
    return out


def _descendants(procs: dict[int, tuple[str, int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _postgres(procs: dict[int, tuple[str, int, float]]) -> set[int]:
    return {pid for pid, (name, _, _) in procs.items() if name == "postgres"}


class NewProcessesCpu:
    """CPU seconds of the processes that appear below this one while the block runs, and of the
    Postgres backends that appear meanwhile (the ledger connections of the command being measured).

    os.times()'s children figures would miss most of it: a decode worker is the child of a fork
    server, which outlives the command that started it and is never waited for by this process,
    and a Postgres backend is the server's child. So /proc is read every `interval_s` and each new
    process's last CPU reading kept; processes that were already there (the web and S3 servers,
    this process's own ledger connections) are left out. What a process does in its last
    `interval_s` before it exits is missed.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.seconds = 0.0
        self.postgres_seconds = 0.0
        self._seen: dict[int, float] = {}
        self._seen_pg: dict[int, float] = {}
        self._stop = threading.Event()

    def _poll(self) -> None:
        procs = _snapshot()
        for pid in _descendants(procs, os.getpid()) - self._before:
            self._seen[pid] = procs[pid][2]
        for pid in _postgres(procs) - self._before_pg:
            self._seen_pg[pid] = procs[pid][2]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def __enter__(self) -> "NewProcessesCpu":
        procs = _snapshot()
        self._before = _descendants(procs, os.getpid())
        self._before_pg = _postgres(procs)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self._seen.values())
        self.postgres_seconds = sum(self._seen_pg.values())
