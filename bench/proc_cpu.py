"""CPU seconds of processes, read from /proc (Linux): what bench/fetch.py charges to each tool.

    from proc_cpu import NewProcessesCpu, cpu_seconds
    with NewProcessesCpu() as cpu:
        subprocess.run([...])
    cpu.seconds, cpu.postgres_seconds
"""

from __future__ import annotations

import os
import threading


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(root: int) -> set[int]:
    tree, out, todo = _process_tree(), set(), [root]
    while todo:
        pid = todo.pop()
        for child in tree.get(pid, []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _postgres_pids() -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        out.add(int(entry))
            except OSError:
                continue
    return out


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

    def _read(self, pids: set[int], into: dict[int, float]) -> None:
        for pid in pids:
            try:
                into[pid] = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                pass

    def _poll(self) -> None:
        self._read(_descendants(os.getpid()) - self._before, self._seen)
        self._read(_postgres_pids() - self._before_pg, self._seen_pg)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def __enter__(self) -> "NewProcessesCpu":
        self._before = _descendants(os.getpid())
        self._before_pg = _postgres_pids()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self._seen.values())
        self.postgres_seconds = sum(self._seen_pg.values())
