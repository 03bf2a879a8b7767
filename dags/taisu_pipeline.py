"""
### taisu-etl pipeline

Builds a Chinese image-text dataset the way TaiSu was built, sample by sample in the ledger:

1. **prepare** migrates the ledger and expands the `sources` globs;
2. **ingest** streams each source file into `sample` rows (one mapped task per file), and
   **ingest_taisu** ingests TaiSu's released archives (images straight into the object store);
3. **text_filter** runs the caption rules before any download (one mapped task per shard);
4. **fetch** downloads, checks and stores images (one mapped task per shard, in the `fetch` pool);
5. **dedup** links exact and near duplicates to their first sample (one mapped task per shard);
6. **score** filters pairs by image-text retrieval with an open_clip model (TaiSu's rule, a
   threshold or a quantile; one mapped task per shard, on the `[score] queue`);
7. **caption** writes generated captions for accepted images, filtered and retrieval-checked
   (one mapped task per shard, on the `[caption] queue`);
8. **funnel** logs how many samples each stage kept, and why the rest were dropped.

Releases are made by the `taisu_release` DAG.
All logic lives in `taisu_etl.tasks`; this file only wires it together. Settings come from
`TAISU_*` variables or the `recipe` parameter.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Context, Param, dag, get_current_context, task


def _shard_context(shard: int) -> Context:
    """The task's context, with the shard named for the mapped task's label in the UI."""
    context = get_current_context()
    context["shard_name"] = f"shard {shard}"  # type: ignore[typeddict-unknown-key]
    return context


def _queue(stage: str) -> str:
    # Read at parse time so a GPU worker (`airflow celery worker -q gpu`) can take the model stages.
    from taisu_etl.tasks import queue_of

    return queue_of(stage)


@dag(
    dag_id="taisu_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["taisu"],
    doc_md=__doc__,
    render_template_as_native_obj=True,  # "{{ params.sources }}" arrives as a list, not its repr
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    params={
        "sources": Param([], type="array", description="URL lists: files or globs (CSV/TSV/JSONL/Parquet)"),
        "taisu_archives": Param([], type="array", description="TaiSu image archives (.tar/.tgz) to ingest"),
        "taisu_captions": Param([], type="array", description="TaiSu caption files for those archives"),
        "recipe": Param("", type="string", description="path of a TOML recipe; empty for TAISU_* settings"),
    },
)
def taisu_pipeline() -> None:
    @task
    def prepare(sources: list[str], recipe: str) -> list[str]:
        from taisu_etl import tasks

        return tasks.prepare(sources, recipe)

    @task(map_index_template="{{ source_name }}")
    def ingest(path: str, recipe: str) -> dict:
        from taisu_etl import tasks

        context = get_current_context()
        context["source_name"] = Path(path).name  # type: ignore[typeddict-unknown-key]
        return tasks.ingest(path, recipe, context)

    @task
    def ingest_taisu(archives: list[str], captions: list[str], recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.ingest_taisu(archives, captions, recipe, get_current_context())

    # The shards_to_* and funnel tasks run even when a mapped stage before them had no shard to
    # do (an empty expansion is "skipped"): a re-run may find nothing new to filter but retries
    # due to fetch, and the funnel is always wanted.
    @task(trigger_rule="none_failed")
    def shards_to_filter(reports: list[dict], taisu: dict, recipe: str) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("ingested", recipe)

    @task(map_index_template="{{ shard_name }}")
    def text_filter(shard: int, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.text_filter(shard, recipe, _shard_context(shard))

    @task(trigger_rule="none_failed")
    def shards_to_fetch(reports: list[dict], recipe: str) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in(["text_ok", "fetch_retry"], recipe)

    @task(map_index_template="{{ shard_name }}", pool="fetch")
    def fetch(shard: int, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.fetch(shard, recipe, _shard_context(shard))

    @task(trigger_rule="none_failed")
    def shards_to_dedup(reports: list[dict], recipe: str) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("fetched", recipe)

    @task(map_index_template="{{ shard_name }}")
    def dedup(shard: int, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.dedup(shard, recipe, _shard_context(shard))

    @task(trigger_rule="none_failed")
    def shards_to_score(reports: list[dict], recipe: str) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("image_ok", recipe)

    @task(map_index_template="{{ shard_name }}", queue=_queue("score"))
    def score(shard: int, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.score(shard, recipe, _shard_context(shard))

    @task(trigger_rule="none_failed")
    def shards_to_caption(reports: list[dict], recipe: str) -> list[int]:
        from taisu_etl import tasks

        return tasks.shards_in("accepted", recipe)

    @task(map_index_template="{{ shard_name }}", queue=_queue("caption"))
    def caption(shard: int, recipe: str) -> dict:
        from taisu_etl import tasks

        return tasks.caption(shard, recipe, _shard_context(shard))

    @task(trigger_rule="none_failed")
    def funnel(reports: list[dict], recipe: str) -> str:
        from taisu_etl import tasks

        return tasks.funnel(recipe)

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
    funnel(captioned, recipe)


taisu_pipeline()
