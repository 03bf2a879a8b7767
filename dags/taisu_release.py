"""
### taisu-etl release

Publishes a versioned release package of the accepted samples that are not taken down, under
`releases/<name>/` in the object store:

1. **create** selects the samples (minimum score, source filters, with or without generated
   captions), writes TaiSu-compatible image tars and captions, webdataset shards and Parquet
   metadata, the dataset card, `SHA256SUMS`, and the manifest last (the only commit point);
2. **verify** re-reads every file against the manifest's checksums and counts, and checks that
   no taken-down sample is inside.

Trigger it from the UI with the form below. All logic lives in `taisu_etl.tasks`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="taisu_release",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "name": Param("", type="string", minLength=1, maxLength=128, pattern="^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="release name: letters, digits, dot, dash, underscore (e.g. taisu-2026.11)"),
        "min_score": Param(None, type=["null", "number"], description="keep pairs scored at least this (empty: no minimum)"),
        "formats": Param(["taisu", "webdataset", "parquet"], type="array",
                         items={"type": "string", "enum": ["taisu", "webdataset", "parquet"]},
                         description="what to write"),
        "with_generated_captions": Param(True, type="boolean", description="include the generated caption (g)"),
        "tgz": Param(False, type="boolean", description="gzip the TaiSu image parts (.tgz)"),
        "shard_size": Param(10000, type="integer", minimum=1, description="samples per shard"),
        "sources": Param([], type="array", description="only samples whose source matches one of these globs (empty: all)"),
        "parent": Param("", type="string", description="previous release for the removal list (empty: the latest published)"),
        "recipe": Param("", type="string", description="path of a TOML recipe; empty for TAISU_* settings"),
    },
)
def taisu_release() -> None:
    @task
    def create(name: str, options: dict, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.release_create(name, options, recipe, get_current_context())

    @task
    def verify(created: dict, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.release_verify(created["name"], recipe)

    recipe = "{{ params.recipe }}"
    options = {
        "min_score": "{{ params.min_score }}",
        "formats": "{{ params.formats }}",
        "with_generated_captions": "{{ params.with_generated_captions }}",
        "tgz": "{{ params.tgz }}",
        "shard_size": "{{ params.shard_size }}",
        "sources": "{{ params.sources }}",
        "parent": "{{ params.parent }}",
    }
    verify(create("{{ params.name }}", options, recipe), recipe)


taisu_release()
