"""
### taisu-etl recheck

Re-validates the URLs of stored samples at a chosen rate, weekly: each gets a `recheck` event
saying whether its URL is alive, expired (404/410/NXDOMAIN) or serves different bytes now (then
a new candidate sample is recorded; the stored image is never replaced). Releases never depend
on live URLs, so nothing is removed here.

Scheduled runs use the defaults below; a run from the trigger form may change them (every field
is optional). Downloads run in the `fetch` pool, beside the pipeline's fetch tasks.
All logic lives in `taisu_etl.tasks`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="taisu_recheck",
    description="Weekly re-validation of stored samples' URLs (alive, expired, changed)",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu", "maintenance"],
    doc_md=__doc__,
    params={
        "limit": Param(10000, type="integer", minimum=1, title="Samples to check",
                       description="stored samples to check, least recently checked first"),
        "rate": Param(10.0, type="number", exclusiveMinimum=0, title="Requests per second",
                      description="requests per second, overall"),
        "recipe": Param(None, type=["null", "string"], title="Recipe",
                        description="path of a TOML recipe on the workers; empty: the workers' TAISU_* settings"),
    },
    render_template_as_native_obj=True,
)
def taisu_recheck() -> None:
    @task(pool="fetch")
    def recheck(limit: int, rate: float, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.recheck(limit, rate, recipe, get_current_context())

    recheck("{{ params.limit }}", "{{ params.rate }}", "{{ params.recipe }}")


taisu_recheck()
