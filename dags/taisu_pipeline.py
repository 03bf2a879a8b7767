"""
### taisu-etl pipeline

Builds a Chinese image-text dataset the way TaiSu was built, sample by sample in the ledger:

1. **prepare** migrates the ledger and expands the `sources` globs;
2. **ingest** streams each source file into `sample` rows (one mapped task per file, named after
   it), and **ingest_taisu** ingests TaiSu's released archives (images straight into the object store);
3. **text_filter** runs the caption rules before any download (one mapped task per shard);
4. **fetch** downloads, checks and stores images (one mapped task per shard, in the `fetch` pool);
5. **dedup** links exact and near duplicates to their first sample (one mapped task per shard);
6. **score** filters pairs by image-text retrieval with an open_clip model (TaiSu's rule, a
   threshold or a quantile; one mapped task per shard, on the `[score] queue`);
7. **caption** writes generated captions for accepted images, filtered and retrieval-checked
   (one mapped task per shard, on the `[caption] queue`);
8. **funnel** logs how many samples each stage kept, and why the rest were dropped;
9. **announce_new_samples** emits an event on the asset `x-taisu://ledger/releasable-samples`
   when this run accepted or captioned samples, which starts the `taisu_release` DAG. When
   nothing new became releasable it is *skipped*, and no release is started.

Mapped tasks are labelled "shard N" (or the source file's name) from the moment they start;
before that the grid can only show the map index. Every stage task logs how many samples wait
in its shard, a progress line every 30 s, and the stage's counts when it ends.

**Trigger form.** Every field is optional: with no sources the run picks up the work already in
the ledger (samples left by a failed run, fetch retries that are due). Leave `recipe` empty to
use the `TAISU_*` settings of the workers.

Clearing any task and running it again leaves the ledger as it was: stages work only on samples
in their input state. All logic lives in `taisu_etl.tasks`; this file only wires it together.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from taisu_etl.tasks import RELEASABLE_SAMPLES_NAME, RELEASABLE_SAMPLES_URI

RELEASABLE_SAMPLES = Asset(name=RELEASABLE_SAMPLES_NAME, uri=RELEASABLE_SAMPLES_URI)

# Rendered by the task runner before the task body runs (and again after it), from the task's own
# expanded argument: a running task is labelled from its first second. A prefix keeps the label a
# string under render_template_as_native_obj, which would turn a bare "3" into an int.
SHARD_LABEL = "shard {{ task.op_kwargs['shard'] }}"
FILE_LABEL = "file {{ task.op_kwargs['path'].rsplit('/', 1)[-1][:200] }}"


def _queue(stage: str) -> str:
    # Read at parse time so a GPU worker (`airflow celery worker -q gpu`) can take the model stages.
    from taisu_etl.tasks import queue_of

    return queue_of(stage)


@dag(
    dag_id="taisu_pipeline",
    description="Ingest, filter, fetch, dedup, score and caption image-text pairs into the ledger",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu", "pipeline"],
    doc_md=__doc__,
    render_template_as_native_obj=True,  # "{{ params.sources }}" arrives as a list, not its repr
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    params={
        "sources": Param([], type="array", items={"type": "string"}, title="Source URL lists",
                         description="files or globs of URL + caption lists (CSV/TSV/JSONL/Parquet), one per line; "
                                     "empty: only continue the work already in the ledger"),
        "taisu_archives": Param([], type="array", items={"type": "string"}, title="TaiSu image archives",
                                description="TaiSu's released image archives (.tar/.tgz) to ingest, one per line; empty: none"),
        "taisu_captions": Param([], type="array", items={"type": "string"}, title="TaiSu caption files",
                                description="TaiSu's caption files (JSON/TXT) for those archives, one per line"),
        "recipe": Param(None, type=["null", "string"], title="Recipe",
                        description="path of a TOML recipe on the workers; empty: the workers' TAISU_* settings"),
    },
)
def taisu_pipeline() -> None:
    @task
    def prepare(sources: list[str] | None, recipe: str | None) -> list[str]:
        from taisu_etl import tasks

        return tasks.prepare(sources, recipe)

    @task(map_index_template=FILE_LABEL)
    def ingest(path: str, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.ingest(path, recipe, get_current_context())

    @task
    def ingest_taisu(archives: list[str] | None, captions: list[str] | None, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.ingest_taisu(archives, captions, recipe, get_current_context())

    # The shards_to_* and later tasks run even when a mapped stage before them had no shard to
    # do (an empty expansion is "skipped"): a re-run may find nothing new to filter but retries
    # due to fetch, and the funnel is always wanted.
    @task(trigger_rule="none_failed")
    def shards_to_filter(reports: list[dict], taisu: dict, recipe: str | None) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("ingested", recipe)

    @task(map_index_template=SHARD_LABEL)
    def text_filter(shard: int, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.text_filter(shard, recipe, get_current_context())

    @task(trigger_rule="none_failed")
    def shards_to_fetch(reports: list[dict], recipe: str | None) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in(["text_ok", "fetch_retry"], recipe)

    @task(map_index_template=SHARD_LABEL, pool="fetch")
    def fetch(shard: int, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.fetch(shard, recipe, get_current_context())

    @task(trigger_rule="none_failed")
    def shards_to_dedup(reports: list[dict], recipe: str | None) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("fetched", recipe)

    @task(map_index_template=SHARD_LABEL)
    def dedup(shard: int, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.dedup(shard, recipe, get_current_context())

    @task(trigger_rule="none_failed")
    def shards_to_score(reports: list[dict], recipe: str | None) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("image_ok", recipe)

    @task(map_index_template=SHARD_LABEL, queue=_queue("score"))
    def score(shard: int, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.score(shard, recipe, get_current_context())

    @task(trigger_rule="none_failed")
    def shards_to_caption(reports: list[dict], recipe: str | None) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("accepted", recipe)

    @task(map_index_template=SHARD_LABEL, queue=_queue("caption"))
    def caption(shard: int, recipe: str | None) -> dict:
        from taisu_etl import tasks

        return tasks.caption(shard, recipe, get_current_context())

    @task(trigger_rule="none_failed")
    def funnel(reports: list[dict], recipe: str | None) -> str:
        from taisu_etl import tasks

        return tasks.funnel(recipe)

    # Airflow records asset events only for a task that succeeds: a skipped task emits none
    # (the task runner sends its outlets with the success state alone).
    @task(trigger_rule="none_failed", outlets=[RELEASABLE_SAMPLES])
    def announce_new_samples(scored: list[dict], captioned: list[dict], recipe: str | None) -> dict:
        from taisu_etl import tasks

        context = get_current_context()
        new = tasks.new_releasable_samples(scored, captioned)
        if not (new["accepted"] or new["captioned"]):
            raise AirflowSkipException("no sample became releasable in this run: no release is started")
        context["outlet_events"][RELEASABLE_SAMPLES].extra = {**new, "recipe": recipe, "run_id": context["run_id"]}
        return new

    recipe = "{{ params.recipe }}"
    files = prepare("{{ params.sources }}", recipe)
    reports = ingest.partial(recipe=recipe).expand(path=files)
    taisu = ingest_taisu("{{ params.taisu_archives }}", "{{ params.taisu_captions }}", recipe)
    files >> taisu
    shards = shards_to_filter(reports, taisu, recipe)
    filtered = text_filter.partial(recipe=recipe).expand(shard=shards)
    fetched = fetch.partial(recipe=recipe).expand(shard=shards_to_fetch(filtered, recipe))
    deduped = dedup.partial(recipe=recipe).expand(shard=shards_to_dedup(fetched, recipe))
    scored = score.partial(recipe=recipe).expand(shard=shards_to_score(deduped, recipe))
    captioned = caption.partial(recipe=recipe).expand(shard=shards_to_caption(scored, recipe))
    funnel(captioned, recipe) >> announce_new_samples(scored, captioned, recipe)


taisu_pipeline()
