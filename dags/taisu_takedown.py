"""
### taisu-etl takedown

Honours rights holders' takedown requests: the image goes from the object store (every version),
from the stored embeddings, from every published release (a new release version without it), and
onto the blocklist so that no later ingest, fetch, dedup, score or release takes it again.

1. **file_request** files the request the form describes (nothing when the form is empty);
2. **process** matches (exact id, TaiSu id, URL, sha256, a whole domain, and the same picture
   re-hosted or kept as a near duplicate), moves every match to `taken_down`, deletes the objects,
   cuts the vectors out of the embedding files, and patches (or, with `withdraw`, withdraws) each
   published release that holds a match;
3. **verify** stats every deleted key and version and records the result on the request
   (`verified`); the task fails while anything remains.

**When it runs.** Hourly, processing every queued request (filed with `taisu-etl takedown request`
or `takedown import FILE`, or by earlier runs of this form), and from the trigger form for one
request: fill `kind`, `value` and `requester` (an `image` value is a path the workers can read).
`dry_run` lists what would be removed and changes nothing.

SQL: `v_takedown_audit` and the other views answer "is it really gone?" from the ledger;
`taisu-etl takedown show ID` prints one request's audit trail. All logic lives in
`taisu_etl.tasks` and `taisu_etl.takedown`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

KINDS = ["sample", "taisu_id", "url", "sha256", "image", "domain"]


@dag(
    dag_id="taisu_takedown",
    description="Takedown requests: remove an image from the store, embeddings and published releases, blocklist it, verify",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["taisu", "takedown"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "kind": Param(None, type=["null", "string"], enum=[None, *KINDS], title="Selector",
                      description="what `value` is: sample (public id), taisu_id, url, sha256, image (file path), domain; "
                                  "empty: process the queued requests only"),
        "value": Param(None, type=["null", "string"], title="Value", description="the id, URL, digest, image path or host"),
        "requester": Param(None, type=["null", "string"], title="Requester", description="who asks (required with a selector)"),
        "contact": Param(None, type=["null", "string"], title="Contact", description="how to reach the requester"),
        "reason": Param(None, type=["null", "string"], title="Reason", description="why (copyright, privacy, ...)"),
        "reference": Param(None, type=["null", "string"], title="Reference", description="the requester's reference, e.g. an e-mail id"),
        "withdraw": Param(False, type="boolean", title="Withdraw releases",
                          description="delete every release that holds a match instead of publishing a patched version"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="list what would be removed (samples, objects, releases) and change nothing"),
        "recipe": Param(None, type=["null", "string"], title="Recipe",
                        description="path of a TOML recipe on the workers; empty: the workers' TAISU_* settings"),
    },
)
def taisu_takedown() -> None:
    @task
    def file_request() -> int | None:
        from taisu_etl import tasks

        return tasks.takedown_file(dict(get_current_context()["params"]))

    @task
    def process(request_id: int | None) -> list[int]:
        from taisu_etl import tasks

        context = get_current_context()
        return tasks.takedown_process(request_id, dict(context["params"]), context)

    @task
    def verify(request_ids: list[int]) -> dict:
        from taisu_etl import tasks

        return tasks.takedown_verify(request_ids, get_current_context()["params"].get("recipe"))

    verify(process(file_request()))


taisu_takedown()
