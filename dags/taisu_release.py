"""
### taisu-etl release

Publishes a versioned release package of the accepted samples that are not taken down, under
`releases/<name>/` in the object store:

1. **create** selects the samples (minimum score, source filters, with or without generated
   captions), writes TaiSu-compatible image tars and captions, webdataset shards and Parquet
   metadata, the dataset card, `SHA256SUMS`, and the manifest last (the only commit point);
2. **verify** re-reads every file against the manifest's checksums and counts, and checks that
   no taken-down sample is inside.

**When it runs.** By itself after every `taisu_pipeline` run that accepted or captioned new
samples (it is scheduled on the asset `x-taisu://ledger/releasable-samples`), with the defaults
below and the recipe of the pipeline run that triggered it; or from the trigger form, where
every field is optional.

**Name.** Leave `name` empty for `taisu-YYYYMMDD-HHMMSS`, the time the run was created (UTC).
Releases are immutable: a name already published is refused, except when an earlier try of the
same run published it (a cleared or retried `create` then reports that release and succeeds).

All logic lives in `taisu_etl.tasks`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from taisu_etl.tasks import RELEASABLE_SAMPLES_NAME, RELEASABLE_SAMPLES_URI

FORMATS = ["taisu", "webdataset", "parquet"]


@dag(
    dag_id="taisu_release",
    description="Publish a versioned release package (TaiSu tars, webdataset, Parquet, dataset card) and verify it",
    schedule=[Asset(name=RELEASABLE_SAMPLES_NAME, uri=RELEASABLE_SAMPLES_URI)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu", "release"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    params={
        "name": Param(None, type=["null", "string"], minLength=1, maxLength=128, pattern="^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      title="Release name",
                      description="letters, digits, dot, dash, underscore (e.g. taisu-2026.11); "
                                  "empty: taisu-YYYYMMDD-HHMMSS of this run's creation time (UTC)"),
        "min_score": Param(None, type=["null", "number"], title="Minimum score",
                           description="keep pairs scored at least this; empty: no minimum"),
        "formats": Param(FORMATS, type="array", items={"type": "string", "enum": FORMATS}, examples=FORMATS,
                         title="Formats", description="what to write: TaiSu tars + captions, webdataset shards, Parquet metadata"),
        "with_generated_captions": Param(True, type="boolean", title="With generated captions",
                                         description="include the generated caption (TaiSu's g)"),
        "tgz": Param(False, type="boolean", title="Gzip TaiSu parts", description="write the TaiSu image parts as .tgz"),
        "shard_size": Param(10000, type="integer", minimum=1, title="Shard size", description="samples per shard"),
        "min_shards": Param(4, type="integer", minimum=1, title="Minimum shards",
                            description="split a small release into at least this many shards (open_clip_train needs "
                                        "shards >= --workers x GPUs; its --workers defaults to 4)"),
        "wds_captions": Param(None, type=["null", "string"], enum=[None, "w", "g", "both"], title="Webdataset captions",
                              description="w: .txt = web caption; g: .txt = generated (else web); "
                                          "both (or empty): .txt = web, .gen.txt = generated"),
        "source_root": Param(None, type=["null", "string"], title="Source root",
                             description="publish each sample's source relative to this folder; empty: the file name only"),
        "sources": Param([], type="array", items={"type": "string"}, title="Sources",
                         description="only samples whose source matches one of these globs, one per line; empty: all"),
        "parent": Param(None, type=["null", "string"], title="Parent release",
                        description="previous release for the removal list; empty: the latest published"),
        "recipe": Param(None, type=["null", "string"], title="Recipe",
                        description="path of a TOML recipe on the workers; empty: the recipe of the pipeline run "
                                    "that triggered this run, else the workers' TAISU_* settings"),
    },
)
def taisu_release() -> None:
    @task
    def create(name: str | None, options: dict, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.release_create(name, options, recipe, get_current_context())

    @task
    def verify(created: dict) -> dict:
        from taisu_etl import tasks

        return tasks.release_verify(created["name"], created["recipe"])

    options = {
        "min_score": "{{ params.min_score }}",
        "formats": "{{ params.formats }}",
        "with_generated_captions": "{{ params.with_generated_captions }}",
        "tgz": "{{ params.tgz }}",
        "shard_size": "{{ params.shard_size }}",
        "min_shards": "{{ params.min_shards }}",
        "wds_captions": "{{ params.wds_captions }}",
        "source_root": "{{ params.source_root }}",
        "sources": "{{ params.sources }}",
        "parent": "{{ params.parent }}",
    }
    verify(create("{{ params.name }}", options, "{{ params.recipe }}"))


taisu_release()
