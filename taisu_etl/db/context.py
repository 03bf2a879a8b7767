"""Who made a decision: the Airflow task (when there is one) and the process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping


def _worker_name() -> str:
    """This process as "host:pid", or "NAME@host:pid" when TAISU_WORKER_NAME names the worker (e.g. gpu)."""
    where = f"{socket.gethostname()}:{os.getpid()}"
    name = os.environ.get("TAISU_WORKER_NAME", "").strip()
    return (f"{name}@{where}" if name else where)[:128]


@dataclass(frozen=True)
class RunContext:
    """Recorded on every ledger event, so "which task run rejected this sample?" is one query."""

    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    recipe_version: str | None = None
    worker: str = field(default_factory=_worker_name)

    @classmethod
    def from_airflow_env(cls, recipe_version: str | None = None, map_index: int | None = None) -> "RunContext":
        """Read the `AIRFLOW_CTX_*` variables Airflow exports to a running task (all None outside one)."""
        env = os.environ
        try_number = env.get("AIRFLOW_CTX_TRY_NUMBER")
        return cls(
            dag_id=env.get("AIRFLOW_CTX_DAG_ID"),
            run_id=env.get("AIRFLOW_CTX_DAG_RUN_ID"),
            task_id=env.get("AIRFLOW_CTX_TASK_ID"),
            map_index=map_index,
            try_number=int(try_number) if try_number and try_number.isdigit() else None,
            recipe_version=recipe_version,
        )

    @classmethod
    def from_airflow_context(cls, context: Mapping[str, Any], recipe_version: str | None = None) -> "RunContext":
        """Build from an Airflow task context (`get_current_context()`), which also knows the map index."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        return cls(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=map_index if map_index is not None and map_index >= 0 else None,
            try_number=getattr(ti, "try_number", None),
            recipe_version=recipe_version,
        )

    def event_fields(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "worker": self.worker,
            "recipe_version": self.recipe_version,
        }
