"""The pipeline as users run it: a production deployment, the DAGs triggered over the REST API and from the UI.

One deployment for the module (tests/deploy/stack.py): Airflow's metadata in Postgres, the real
scheduler, CeleryExecutor on the local Redis with a worker for the `default` queue and one for
`gpu` (`[score]`/`[caption] queue = "gpu"`), a Postgres ledger, rclone's S3 server (it checks every
request's signature) as the store, and the synthetic web on 127.0.0.1. `taisu_pipeline` is
triggered over the REST API with the demo's URL lists; its asset event starts `taisu_release`.

The UI tests share that deployment and the finished runs (which is why they live in this module:
a module-scoped deployment stops as soon as its last test is done). They drive Debian's Chromium
through Playwright and leave their screenshots in var/test-artifacts/ui/.
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.db.leases import lease_holders  # noqa: E402
from taisu_etl.db.schema import release, release_member, sample, sample_event, sample_state  # noqa: E402
from taisu_etl.deploy import DeployError, restart_worker  # noqa: E402
from taisu_etl.deploy.deployment import read_password  # noqa: E402
from taisu_etl.deploy.settings import ADMIN_USER  # noqa: E402
from taisu_etl.demo import demo_web, write_demo_sources  # noqa: E402
from taisu_etl.release import read_manifest, verify_release  # noqa: E402
from taisu_etl.release.selection import ELIGIBLE_STATES  # noqa: E402
from taisu_etl.tasks import RELEASABLE_SAMPLES_URI  # noqa: E402
from taisu_etl.vocab import State  # noqa: E402
from tests.deploy.browser import VIEWPORT, Shots, capture_on_failure, chromium, log_in  # noqa: E402
from tests.deploy.stack import ARTIFACTS, PIPELINE_DAGS, Stack, production_stack  # noqa: E402

pytestmark = [pytest.mark.airflow, pytest.mark.postgres, pytest.mark.s3]

PAIRS, SEED, SHARDS = 20, 11, 4
# ledger stage -> the pipeline task that records it
STAGE_TASKS = {"ingest": "ingest", "text": "text_filter", "fetch": "fetch", "image": "dedup", "score": "score",
               "caption": "caption"}
GPU_STAGES = {"score", "caption"}
# States a sample may not be left in once every stage has run.
UNFINISHED = {State.INGESTED, State.TEXT_OK, State.FETCHED, State.IMAGE_OK, State.ACCEPTED}
PIPELINE_TIMEOUT = 480
RELEASE_TIMEOUT = 180


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("celery-e2e")
    with demo_web(pairs=PAIRS, seed=SEED) as web, production_stack(root, tag="e2e", web=web, s3="rclone", shards=SHARDS) as stack:
        stack.wait_for_dags()
        yield stack


@pytest.fixture(scope="module")
def pipeline_run(stack: Stack) -> dict[str, Any]:
    """The pipeline run triggered over the REST API with the demo's sources, finished (success, or the test fails)."""
    sources = write_demo_sources(stack.web, stack.root / "lists", pairs=PAIRS, seed=SEED)
    run = stack.api().trigger("taisu_pipeline", {"sources": [str(p) for p in sources]})
    assert run["run_type"] == "manual" and run["conf"]["sources"] == [str(p) for p in sources]
    started = time.monotonic()
    finished = stack.wait_for_run("taisu_pipeline", run["dag_run_id"], timeout=PIPELINE_TIMEOUT)
    finished["seconds"] = round(time.monotonic() - started, 1)
    return finished


@pytest.fixture(scope="module")
def release_run(stack: Stack, pipeline_run: dict[str, Any]) -> dict[str, Any]:
    """The `taisu_release` run that the pipeline's asset event started, finished."""
    deadline = time.monotonic() + 120
    while not (runs := [r for r in stack.runs("taisu_release") if r["run_type"] == "asset_triggered"]):
        assert time.monotonic() < deadline, (
            "no asset-triggered taisu_release run within 120 s of the pipeline's success; runs: "
            f"{[(r['dag_run_id'], r['run_type'], r['state']) for r in stack.runs('taisu_release')]}")
        time.sleep(2)
    assert len(runs) == 1, f"one pipeline run that accepted samples must start one release: {runs}"
    return stack.wait_for_run("taisu_release", runs[0]["dag_run_id"], timeout=RELEASE_TIMEOUT)


def _events(stack: Stack) -> list[dict[str, Any]]:
    e, s = sample_event.c, sample_state.c
    query = (sa.select(e.sample_id, e.stage, e.to_state, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker,
                       e.recipe_version, s.shard, sample.c.source)
             .join(sample_state, s.sample_id == e.sample_id).join(sample, sample.c.id == e.sample_id)
             .where(e.stage.in_(list(STAGE_TASKS))))
    with stack.ledger_engine().connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _funnel(stack: Stack) -> Counter[str]:
    with stack.ledger_engine().connect() as conn:
        return Counter(dict(conn.execute(sa.select(sample_state.c.state, sa.func.count()).group_by(sample_state.c.state)).all()))


def _releasable(stack: Stack) -> int:
    """Samples a release takes: one per public id among the accepted and captioned (none is blocklisted here)."""
    query = (sa.select(sa.func.count(sa.distinct(sample.c.url_id))).join(sample_state, sample_state.c.sample_id == sample.c.id)
             .where(sample_state.c.state.in_(ELIGIBLE_STATES)))
    with stack.ledger_engine().connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_the_pipeline_runs_on_the_celery_workers_and_every_event_says_who_decided(stack: Stack, pipeline_run: dict[str, Any]) -> None:
    run_id = pipeline_run["dag_run_id"]
    tis = stack.task_instances("taisu_pipeline", run_id)
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
    # Every task did its part: nothing skipped, nothing failed (announce_new_samples runs only
    # when samples became releasable, and they did).
    assert set(states.values()) == {"success"}, stack.diagnose("taisu_pipeline", run_id)
    queues = {ti["task_id"]: ti["queue"] for ti in tis}
    assert queues["score"] == queues["caption"] == "gpu" and queues["fetch"] == "default", queues

    # Mapped tasks carry the names of what they work on (rendered_map_index, the UI's label).
    labels = {(ti["task_id"], ti["map_index"]): ti["rendered_map_index"] for ti in tis if ti["map_index"] >= 0}
    for task in ("text_filter", "fetch", "dedup", "score", "caption"):
        mapped = {i: label for (t, i), label in labels.items() if t == task}
        assert mapped and all(label == f"shard {i}" for i, label in mapped.items()), (task, mapped)
    assert {labels[("ingest", i)] for i in (0, 1)} == {"file synthetic_web.csv", "file noisy_captions.csv"}

    # The ledger: every sample went as far as it could (no stage left work behind) ...
    funnel = _funnel(stack)
    assert sum(funnel.values()) == PAIRS + 13 + 15 + 1, funnel  # the demo's pairs, noisy captions, hostile URLs, robots case
    assert not {s.value for s in UNFINISHED} & set(funnel), funnel
    assert funnel["captioned"] >= 12, funnel

    # ... and every decision names its run, task, map index, try and worker.
    events = _events(stack)
    assert {(e["dag_id"], e["run_id"]) for e in events} == {("taisu_pipeline", run_id)}
    assert all(e["task_id"] == STAGE_TASKS[e["stage"]] for e in events), Counter((e["stage"], e["task_id"]) for e in events)
    assert all(e["try_number"] is not None and e["try_number"] >= 1 for e in events)
    assert all(e["recipe_version"] == "e2e-e2e" for e in events)
    assert all(e["map_index"] is not None for e in events), Counter(e["stage"] for e in events if e["map_index"] is None)
    for e in events:  # the map index of each event is the task instance that worked on that sample's shard (or file)
        label = labels[(e["task_id"], e["map_index"])]
        expected = f"file {Path(e['source']).name}" if e["stage"] == "ingest" else f"shard {e['shard']}"
        assert label == expected, (e, label)
    assert all(re.fullmatch(r"(default|gpu)@[^:@]+:\d+", e["worker"]) for e in events), {e["worker"] for e in events}
    workers = Counter((e["stage"], e["worker"].split("@", 1)[0]) for e in events)
    assert {(stage, name) for stage, name in workers} == {(stage, "gpu" if stage in GPU_STAGES else "default")
                                                         for stage in STAGE_TASKS}, workers
    # One decision per stage per sample, and every mapped task instance decided for its samples.
    per_sample = Counter((e["sample_id"], e["stage"]) for e in events)
    assert max(per_sample.values()) == 1, [k for k, n in per_sample.items() if n > 1]
    for stage in ("ingest", "text"):  # every sample was ingested and filtered by this run
        assert len({e["sample_id"] for e in events if e["stage"] == stage}) == sum(funnel.values()), stage
    for stage, task in STAGE_TASKS.items():
        worked = {e["map_index"] for e in events if e["stage"] == stage}
        assert worked == {i for (t, i) in labels if t == task}, (stage, worked)

    # Nothing stays leased.
    ledger = stack.ledger()
    try:
        assert lease_holders(ledger) == []
    finally:
        ledger.dispose()
    assert stack.leased_samples() == 0


def test_the_asset_event_starts_a_release_that_verifies_with_every_releasable_sample(
        stack: Stack, pipeline_run: dict[str, Any], release_run: dict[str, Any]) -> None:
    events = stack.api().get("/api/v2/assets/events", source_dag_id="taisu_pipeline", limit=100)["asset_events"]
    assert [(e["uri"], e["source_run_id"]) for e in events] == [(RELEASABLE_SAMPLES_URI, pipeline_run["dag_run_id"])]
    assert release_run["run_type"] == "asset_triggered" and release_run["conf"] == {}
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances("taisu_release", release_run["dag_run_id"])}
    assert states == {"create": "success", "verify": "success"}

    created = stack.api().xcom("taisu_release", release_run["dag_run_id"], "create")
    name = created["name"]
    assert re.fullmatch(r"taisu-\d{8}-\d{6}", name)  # named after the run, as the form's empty name says
    store, ledger = stack.store(), stack.ledger()
    try:
        report = verify_release(store, name, ledger=ledger)
        assert report.ok and report.ledger_checked, report.summary()
        manifest = read_manifest(store, name)
        assert manifest is not None
    finally:
        ledger.dispose()
    releasable = _releasable(stack)
    with stack.ledger_engine().connect() as conn:
        row = conn.execute(sa.select(release.c.id, release.c.state).where(release.c.name == name)).one()
        members = conn.execute(sa.select(sa.func.count()).where(release_member.c.release_id == row.id)).scalar_one()
    assert row.state == "published"
    assert members == manifest["counts"]["samples"] == report.samples == releasable == created["samples"], (
        members, manifest["counts"], releasable)
    assert releasable >= 12


def test_restart_worker_refuses_a_worker_that_runs(stack: Stack) -> None:
    gpu = stack.worker("gpu")
    with pytest.raises(DeployError, match=f"the worker-gpu process \\({gpu.pid}\\) is running"):
        restart_worker(stack.settings, "gpu", env=stack.env)
    assert stack.worker("gpu") == gpu and gpu.alive()


# ------------------------------------------------------------------------------------------ the UI


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest) -> Iterator[Shots]:
    shots = Shots(ARTIFACTS / "ui")
    yield shots
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nUI screenshots ({shots.count}): {shots.folder}", flush=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, stack: Stack, shots: Shots) -> Iterator[Any]:
    """A fresh browser context, logged in through the login page."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        with capture_on_failure(shots, page, "login"):
            page.goto(stack.deployment.url + "/")
            page.wait_for_url("**/auth/login**")
            if not list(shots.folder.glob("*-login.png")):
                shots.shot(page, "login")
            log_in(page, stack.deployment.url, ADMIN_USER, read_password(stack.deployment.password_file))
        yield page
    finally:
        context.close()


def test_ui_the_dag_list_shows_every_dag_with_its_description(stack: Stack, page: Any, shots: Shots) -> None:
    dags = stack.wait_for_dags()
    with capture_on_failure(shots, page, "dag-list"):
        page.goto(stack.deployment.url + "/dags")
        for dag_id in PIPELINE_DAGS:
            page.get_by_role("link", name=dag_id, exact=True).wait_for()
        shots.shot(page, "dag-list")
        for dag_id in PIPELINE_DAGS:
            description = dags[dag_id]["description"]
            assert description, f"{dag_id} has no description"
            page.get_by_role("link", name=dag_id, exact=True).hover()
            tooltip = page.get_by_role("tooltip").filter(has_text=description)
            tooltip.wait_for()
            assert tooltip.inner_text().strip() == description
            if dag_id == "taisu_pipeline":
                shots.shot(page, "dag-list-description")
            page.mouse.move(0, 0)  # the next hover gets a tooltip of its own
            tooltip.wait_for(state="hidden")


def test_ui_the_release_trigger_form_renders_its_params_and_its_run_succeeds(
        stack: Stack, page: Any, shots: Shots, release_run: dict[str, Any]) -> None:
    params = stack.api().get("/api/v2/dags/taisu_release/details")["params"]
    before = {r["dag_run_id"] for r in stack.runs("taisu_release")}
    with capture_on_failure(shots, page, "trigger-form"):
        page.goto(stack.deployment.url + "/dags/taisu_release")
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        dialog.get_by_text("Run Parameters").wait_for()
        shots.shot(page, "trigger-form")
        text = dialog.inner_text()
        for key, param in params.items():
            assert param["schema"]["title"] in text, f"the form does not show the {key!r} param's title"
            assert param["description"] in text, f"the form does not show the {key!r} param's description"
        trigger = dialog.get_by_role("button", name="Trigger", exact=True)
        trigger.scroll_into_view_if_needed()
        shots.shot(page, "trigger-form-bottom")
        assert trigger.is_enabled(), "the Trigger button is disabled with only the defaults filled in"
        trigger.click()  # nothing filled in: every field of the form is optional or has a default
        page.wait_for_url(re.compile(r".*/dags/taisu_release/runs/[^/]+$"))
        run_id = urllib.parse.unquote(page.url.rsplit("/", 1)[1])
        assert run_id not in before
        run = stack.wait_for_run("taisu_release", run_id, timeout=RELEASE_TIMEOUT)
        assert run["run_type"] == "manual" and run["triggering_user_name"] == ADMIN_USER
        page.reload()
        page.get_by_text("Success").first.wait_for()
        shots.shot(page, "triggered-release-run")

    created = stack.api().xcom("taisu_release", run_id, "create")
    assert re.fullmatch(r"taisu-\d{8}-\d{6}", created["name"])
    ledger = stack.ledger()
    try:
        report = verify_release(stack.store(), created["name"], ledger=ledger)
    finally:
        ledger.dispose()
    assert report.ok, report.summary()
    assert created["samples"] == _releasable(stack)


def test_ui_the_grid_of_the_finished_pipeline_run_shows_shard_names(
        stack: Stack, page: Any, shots: Shots, pipeline_run: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    run_id = pipeline_run["dag_run_id"]
    run_path = f"/dags/taisu_pipeline/runs/{urllib.parse.quote(run_id)}"
    shards = {ti["map_index"] for ti in stack.task_instances("taisu_pipeline", run_id) if ti["task_id"] == "fetch"}
    assert shards == set(range(SHARDS))
    with capture_on_failure(shots, page, "grid"):
        page.goto(stack.deployment.url + run_path)
        for task in ("text_filter", "fetch", "dedup", "score", "caption"):
            page.get_by_text(f"{task} [ ]", exact=True).wait_for()  # the grid marks mapped tasks with "[ ]"
        shots.shot(page, "pipeline-run-grid")
        for task in ("text_filter", "fetch", "dedup", "score", "caption"):
            if task != "text_filter":
                page.goto(stack.deployment.url + run_path)  # (the last cell's tooltip would cover the next cell)
            # The grid's cell of the mapped task in this run opens its task instances, one row per shard.
            page.get_by_test_id(f"grid-{run_id}-{task}").click()
            page.wait_for_url(f"**/tasks/{task}/mapped")
            page.get_by_role("heading", name=f"{task} [{len(shards)}]", exact=True).wait_for()
            rows = page.get_by_role("row").filter(has_text=re.compile(r"shard \d+"))
            expect(rows).to_have_count(len(shards))
            labels = sorted(re.search(r"shard \d+", rows.nth(i).inner_text()).group(0) for i in range(rows.count()))
            assert labels == [f"shard {i}" for i in sorted(shards)], (task, labels)
            if task in ("fetch", "caption"):
                shots.shot(page, f"{task}-mapped-shards")
