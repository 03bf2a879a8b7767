"""
### taisu-etl maintenance

Daily upkeep of the ledger and the object store; two independent tasks:

1. **release_dead_leases** frees the sample leases of owners that are provably dead (same host,
   and the process is gone or is another one now) and of leases already expired, so the next
   stage task finds those samples free instead of waiting for them;
2. **remove_orphan_images** deletes the images under `images/` that no sample names
   (`sample.object_key`) and that were last written more than `min_age_hours` ago: a fetch or
   ingest that died between storing an image and recording it, or a TaiSu archive image the
   image stage replaced by its normalised copy. Every version of such an object goes. The grace
   period protects in-flight work: the fetch stage stores an image before its ledger row lands.
   `releases/` and `embeddings/` are never touched (no sample row points to them at all).

**Dry run.** Scheduled runs act (`dry_run` off by default): a daily job that only reported would
leave dead leases blocking the stages until someone read its log. Turn `dry_run` on in the form
to see what would be freed and deleted, with nothing changed; the counts and the first orphan
keys are in the task logs.

The object store must belong to this ledger alone: images another ledger records would look like
orphans here. A ledger that records no stored image at all, while the store holds old images, is
taken for the wrong ledger: the task fails and deletes nothing.
All logic lives in `taisu_etl.tasks` and `taisu_etl.maintenance`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task


@dag(
    dag_id="taisu_maintenance",
    description="Daily: free the leases of dead workers, delete images no ledger row names (dry-run switch)",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu", "maintenance"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "dry_run": Param(False, type="boolean", title="Dry run: only report, change nothing",
                         description="on: list the leases that would be freed and the images that would be deleted, "
                                     "and change nothing; off (scheduled runs): free and delete"),
        "min_age_hours": Param(6, type="number", minimum=1, title="Grace period for orphan images (hours)",
                               description="images written more recently than this are never deleted, referenced or "
                                           "not: the fetch stage stores an image before its ledger row lands"),
        "recipe": Param(None, type=["null", "string"], title="Recipe",
                        description="path of a TOML recipe on the workers; empty: the workers' TAISU_* settings"),
    },
)
def taisu_maintenance() -> None:
    @task
    def release_dead_leases(dry_run: bool, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.release_dead_leases(bool(dry_run), recipe)

    @task
    def remove_orphan_images(min_age_hours: float, dry_run: bool, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.remove_orphan_objects(float(min_age_hours), bool(dry_run), recipe)

    release_dead_leases("{{ params.dry_run }}", "{{ params.recipe }}")
    remove_orphan_images("{{ params.min_age_hours }}", "{{ params.dry_run }}", "{{ params.recipe }}")


taisu_maintenance()
