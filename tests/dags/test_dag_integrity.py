"""Every DAG file imports cleanly, without touching a database or the network while parsing, and
meets a user in the UI the same way: documentation, tags, a trigger form that submits with every
optional field left empty, and mapped tasks whose labels render from their own arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("airflow", reason="apache-airflow is installed by `make test`")

from taisu_etl.airflow_local import DAGS_FOLDER, airflow_env  # noqa: E402
from taisu_etl.tasks import RELEASABLE_SAMPLES_URI  # noqa: E402

PARSE = r"""
import json, socket, sys
def refuse(*a, **k):
    raise RuntimeError("DAG parsing opened a network connection")
socket.socket.connect = refuse
socket.create_connection = refuse
import taisu_etl.db.engine as eng, taisu_etl.services as svc
def no_db(*a, **k):
    raise RuntimeError("DAG parsing opened the ledger")
eng.make_engine = svc.open_ledger = svc.open_store = no_db
import jinja2
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.param import Param

bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {path: str(err) for path, err in bag.import_errors.items()}, "dags": {}}


def accepts(param, value):
    try:
        Param(value, **param.schema).resolve(suppress_exception=False)
        return True
    except Exception:
        return False


for dag_id in sorted(bag.dag_ids):
    dag = bag.dags[dag_id]  # get_dag() would read Airflow's metadata database
    params = {}
    for name in dag.params:
        param = dag.params.get_param(name)
        kinds = param.schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        params[name] = {
            "types": kinds, "default": param.value, "description": param.description or "", "title": param.schema.get("title", ""),
            "accepts_none": accepts(param, None), "accepts_empty_list": accepts(param, []),
        }
    try:
        dag.params.validate()
        defaults_valid = True
    except Exception as exc:
        defaults_valid = repr(exc)
    labels = {}
    for task in dag.tasks:
        template = getattr(task, "map_index_template", None)
        if not template:
            continue
        # What the task runner's early render has: the unmapped task, its expanded argument filled in.
        arg = next(iter(task.op_kwargs_expand_input.value))
        value = 3 if arg == "shard" else "/data/lists/wukong_1.csv"
        env = dag.get_template_env()
        env.undefined = jinja2.StrictUndefined
        rendered = env.from_string(template).render({"task": task.unmap({"op_kwargs": {arg: value}})})
        labels[task.task_id] = [type(rendered).__name__, str(rendered)]
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}
    schedule = dag.schedule
    out["dags"][dag_id] = {
        "doc_md": dag.doc_md or "", "description": dag.description or "", "tags": sorted(dag.tags), "catchup": dag.catchup,
        "schedule": schedule if isinstance(schedule, str) or schedule is None else [a.uri for a in schedule],
        "params": params, "defaults_valid": defaults_valid, "labels": labels, "outlets": outlets,
    }
print("RESULT " + json.dumps(out, default=str))
sys.exit(1 if bag.import_errors else 0)
"""

# Airflow's own task runner start-up (`_prepare`, task_runner.py of 3.3.2) for each mapped task of the
# pipeline, with a stand-in for the supervisor channel: upstream XComs are answered from a fixed
# list, and every message the runner sends is recorded. The task body never runs.
PREPARE = r"""
import json, sys, uuid
from datetime import datetime, timezone
import structlog
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType, TIRunContext
from airflow.sdk.execution_time import comms, task_runner

UPSTREAM = {"shard": [3, 5, 7, 9], "path": ["/data/lists/wukong_1.csv", "/data/lists/wukong_2.csv"]}
dag = DagBag(dag_folder=sys.argv[1]).dags["taisu_pipeline"]
now = datetime.now(timezone.utc)
run = DagRun(dag_id=dag.dag_id, run_id="manual__t", logical_date=now, data_interval_start=now, data_interval_end=now,
             run_after=now, start_date=now, end_date=None, run_type=DagRunType.MANUAL, state=DagRunState.RUNNING,
             conf={}, consumed_asset_events=[], partition_key=None)
out = {}
for task in dag.tasks:
    if not getattr(task, "map_index_template", None):
        continue
    arg = next(iter(task.op_kwargs_expand_input.value))
    sent = []

    class Channel:
        def send(self, msg):
            sent.append(msg)
            kind = type(msg).__name__
            if kind == "GetXCom":
                return comms.XComResult(key=msg.key, value=UPSTREAM[arg])
            if kind == "ValidateInletsAndOutlets":
                return comms.InactiveAssetsResult(inactive_assets=[])
            return None

    task_runner.SUPERVISOR_COMMS = Channel()
    ctx = TIRunContext(dag_run=run, max_tries=2, should_retry=False, variables=[], connections=[], xcom_keys_to_clear=[],
                       upstream_map_indexes={u: None for u in task.upstream_task_ids})
    ti = task_runner.RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=task.task_id, dag_id=dag.dag_id, run_id=run.run_id, try_number=1, map_index=1, task=task,
        start_date=now, _ti_context_from_server=ctx, max_tries=2, dag_version_id=uuid.uuid4(), hostname="h")
    task_runner._prepare(ti, structlog.get_logger(), ti.get_template_context())
    out[task.task_id] = [m.rendered_map_index for m in sent if type(m).__name__ == "SetRenderedMapIndex"]
print("RESULT " + json.dumps(out))
"""

DAG_IDS = ["taisu_maintenance", "taisu_pipeline", "taisu_recheck", "taisu_release", "taisu_takedown"]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("airflow")
    res = subprocess.run([sys.executable, "-c", PARSE, str(DAGS_FOLDER)], env=airflow_env(home), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_dag_files_parse_without_database_or_network(parsed: dict[str, Any]) -> None:
    assert parsed["errors"] == {}
    assert sorted(parsed["dags"]) == DAG_IDS


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_dag_is_documented_tagged_and_never_catches_up(parsed: dict[str, Any], dag_id: str) -> None:
    dag = parsed["dags"][dag_id]
    assert dag["doc_md"].lstrip().startswith(f"### taisu-etl {dag_id.removeprefix('taisu_')}")
    assert dag["description"] and "taisu" in dag["tags"] and len(dag["tags"]) >= 2
    assert dag["catchup"] is False


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_trigger_form_submits_with_every_optional_field_empty(parsed: dict[str, Any], dag_id: str) -> None:
    """Airflow's form treats a field whose type does not allow null as required and missing when empty."""
    dag = parsed["dags"][dag_id]
    assert dag["defaults_valid"] is True
    for name, param in dag["params"].items():
        assert param["description"] and param["title"], f"{dag_id}.{name} has no title or description"
        if param["types"] == ["array"]:
            assert param["accepts_empty_list"], f"{dag_id}.{name}: an empty list must be valid"
        elif param["types"] in (["boolean"], ["integer"], ["number"]):
            assert param["default"] is not None, f"{dag_id}.{name}: a non-null {param['types']} needs a default"
        else:
            assert "null" in param["types"] and param["accepts_none"], f"{dag_id}.{name}: an optional field must accept null"
            assert param["default"] is None, f"{dag_id}.{name}: an empty optional field is null, not {param['default']!r}"


def test_params_that_users_leave_empty(parsed: dict[str, Any]) -> None:
    dags = parsed["dags"]
    for dag_id in DAG_IDS:
        assert dags[dag_id]["params"]["recipe"]["types"] == ["null", "string"]
    release = dags["taisu_release"]["params"]
    for name in ("name", "parent", "min_score"):
        assert release[name]["default"] is None and release[name]["accepts_none"]
    assert "taisu-YYYYMMDD-HHMMSS" in release["name"]["description"]
    maintenance = dags["taisu_maintenance"]["params"]
    assert maintenance["dry_run"]["types"] == ["boolean"] and maintenance["dry_run"]["default"] is False
    assert maintenance["dry_run"]["title"].lower().startswith("dry run")
    assert maintenance["min_age_hours"]["default"] >= 1
    takedown = dags["taisu_takedown"]["params"]
    for name in ("kind", "value", "requester", "contact", "reason", "reference"):
        assert takedown[name]["default"] is None and takedown[name]["accepts_none"], name
    assert takedown["dry_run"]["default"] is False and takedown["withdraw"]["default"] is False


def test_schedules_and_the_asset_that_chains_pipeline_to_release(parsed: dict[str, Any]) -> None:
    dags = parsed["dags"]
    assert dags["taisu_pipeline"]["schedule"] is None
    assert dags["taisu_pipeline"]["outlets"] == {"announce_new_samples": [RELEASABLE_SAMPLES_URI]}
    assert dags["taisu_release"]["schedule"] == [RELEASABLE_SAMPLES_URI]
    assert dags["taisu_recheck"]["schedule"] == "@weekly"
    assert dags["taisu_maintenance"]["schedule"] == "@daily"
    assert dags["taisu_takedown"]["schedule"] == "@hourly"


def test_mapped_tasks_are_labelled_from_their_own_argument(parsed: dict[str, Any]) -> None:
    """The task runner renders map_index_template right after the templates, before the task body
    runs: the label must need nothing but the task's expanded argument, and stay a string."""
    labels = parsed["dags"]["taisu_pipeline"]["labels"]
    assert labels == {
        "ingest": ["str", "file wukong_1.csv"],
        **{stage: ["str", "shard 3"] for stage in ("text_filter", "fetch", "dedup", "score", "caption")},
    }


def test_running_mapped_tasks_are_labelled_before_their_body_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The label reaches Airflow while the task starts, not only when it ends: the runner's early
    render (right after the templates) sends it. Before a task starts, Airflow has no label to
    show (only the task runner sets it), so the grid shows the map index until then."""
    home = tmp_path_factory.mktemp("airflow-prepare")
    res = subprocess.run([sys.executable, "-c", PREPARE, str(DAGS_FOLDER)], env=airflow_env(home), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    sent = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
    assert sent == {"ingest": ["file wukong_2.csv"], **{s: ["shard 5"] for s in ("text_filter", "fetch", "dedup", "score", "caption")}}


def test_dag_files_import_only_the_sdk() -> None:
    for path in DAGS_FOLDER.glob("*.py"):
        text = path.read_text()
        assert "from airflow.sdk import" in text, path
        assert "from airflow.models" not in text and "from airflow.decorators" not in text, path

