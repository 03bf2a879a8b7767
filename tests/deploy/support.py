"""Helpers of the deployment tests: free ports, a clean caller environment, the processes of a home."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from taisu_etl.procfs import start_ticks, stat_fields


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def caller_environment(taisu_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any TAISU_* or AIRFLOW* setting, then TAISU_HOME and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAISU_", "AIRFLOW", "_AIRFLOW"))}
    env["TAISU_HOME"] = str(taisu_home)
    env.update(extra)
    return env


def processes_of_home(airflow_home: Path) -> dict[int, int]:
    """Every live process whose environment names `airflow_home` as AIRFLOW_HOME: pid -> start ticks."""
    marker = f"AIRFLOW_HOME={airflow_home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        ticks = start_ticks(int(entry.name))
        if marker in environ.split(b"\0") and ticks is not None:
            found[int(entry.name)] = ticks
    return found


def children_of(pid: int) -> set[int]:
    """The live children of process `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses (hex, as /proc/net/tcp* writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (a test deployment's broker keys) from the Redis at `url`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
