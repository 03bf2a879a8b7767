"""What Linux's /proc says of a process: its stat fields, and the start time that tells it apart
from a later process that reuses its pid (lease owners and the deploy tool's process records)."""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (the state letter) on; None when it cannot be read.

    The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    """
    try:
        text = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields if len(fields) >= 20 and fields[19].isdigit() else None


def start_ticks(pid: int) -> int | None:
    """The start time of the live (not zombie) process `pid` in clock ticks after boot (field 22), else None."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])
