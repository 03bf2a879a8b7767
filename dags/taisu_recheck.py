"""
### taisu-etl recheck

Re-validates the URLs of stored samples at a chosen rate: each gets a `recheck` event saying
whether its URL is alive, expired (404/410/NXDOMAIN) or serves different bytes now (then a new
candidate sample is recorded; the stored image is never replaced). Releases never depend on live
URLs, so nothing is removed here. All logic lives in `taisu_etl.tasks`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="taisu_recheck",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu"],
    doc_md=__doc__,
    params={
        "limit": Param(10000, type="integer", minimum=1, description="stored samples to check, least recently checked first"),
        "rate": Param(10.0, type="number", exclusiveMinimum=0, description="requests per second, overall"),
        "recipe": Param("", type="string", description="path of a TOML recipe; empty for TAISU_* settings"),
    },
    render_template_as_native_obj=True,
)
def taisu_recheck() -> None:
    @task(pool="fetch")
    def recheck(limit: int, rate: float, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.recheck(limit, rate, recipe, get_current_context())

    recheck("{{ params.limit }}", "{{ params.rate }}", "{{ params.recipe }}")


taisu_recheck()
