"""`taisu-etl airflow up|down|status`: a real Airflow deployment of this checkout (see taisu_etl.deploy).

Mounted by taisu_etl/cli.py; user errors are TaisuError subclasses, printed by its `main()` as one
`error: ...` line (here followed by the end of the failing process's log) with exit status 2.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

airflow_app = typer.Typer(help="A real Airflow 3 deployment of this checkout: api-server (UI), scheduler, "
                               "dag-processor, triggerer; Celery workers with --production.", no_args_is_help=True)

HomeOpt = Annotated[
    Optional[Path],
    typer.Option("--home", help="Airflow home of the deployment (default: $TAISU_HOME/airflow, i.e. var/airflow)"),
]


def _home(home: Path | None) -> Path:
    return (home or Path(os.environ.get("TAISU_HOME") or "var") / "airflow").resolve()


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse_sets(values: list[str]) -> dict[str, str]:
    from taisu_etl.errors import ConfigError

    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write section.key=value (e.g. scheduler.task_instance_heartbeat_timeout=60)")
        pairs[key] = value
    return pairs


@airflow_app.command("up")
def up_cmd(
    production: Annotated[bool, typer.Option("--production", help="Postgres metadata, CeleryExecutor on Redis, "
                                                                     "workers for the default and gpu queues")] = False,
    port: Annotated[Optional[int], typer.Option("--port", envvar="TAISU_AIRFLOW_PORT", show_default="8080",
                                                help="api-server (UI) port on 127.0.0.1")] = None,
    home: HomeOpt = None,
    fetch_slots: Annotated[int, typer.Option("--fetch-slots", help="slots of the fetch pool (shards downloading at once)")] = 2,
    parallelism: Annotated[Optional[int], typer.Option("--parallelism", show_default="max(4, CPUs)",
                                                       help="task instances running at once, all DAGs together")] = None,
    password: Annotated[Optional[str], typer.Option("--password", envvar="TAISU_AIRFLOW_PASSWORD",
                                                    help="password of the admin user (default: generated once, kept in a file)")] = None,
    no_login: Annotated[bool, typer.Option("--no-login", help="everyone who reaches the port is admin, no log-in "
                                                               "(only on a machine nobody else uses)")] = False,
    db_url: Annotated[Optional[str], typer.Option("--db-url", envvar="TAISU_AIRFLOW_DB_URL",
                                                  show_default="postgresql://postgres@127.0.0.1:5432/taisu_airflow",
                                                  help="--production: Airflow's own metadata database (created if missing)")] = None,
    redis_db: Annotated[Optional[int], typer.Option("--redis-db", envvar="TAISU_AIRFLOW_REDIS_DB", show_default="0",
                                                    help="--production: Redis database number of the Celery broker")] = None,
    worker_concurrency: Annotated[Optional[int], typer.Option("--worker-concurrency", show_default="max(2, CPUs)",
                                                              help="--production: tasks at once on the default-queue worker")] = None,
    gpu_concurrency: Annotated[int, typer.Option("--gpu-concurrency", help="--production: tasks at once on the gpu-queue worker")] = 1,
    heartbeat_timeout: Annotated[int, typer.Option("--heartbeat-timeout", help="seconds without a task heartbeat before "
                                                                               "its try is failed (and retried)")] = 30,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for every component to be healthy")] = 240.0,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="any Airflow setting, section.key=value; repeat")] = None,
) -> None:
    """Start Airflow for this checkout (or say where it already runs), wait until healthy, print the URL."""
    from taisu_etl.config import load_settings
    from taisu_etl.deploy.deployment import describe, up
    from taisu_etl.deploy.settings import ADMIN_USER, DeploySettings

    load_settings()  # a bad TAISU_* setting or recipe: its one-line error now, not an import error in the UI later
    settings = DeploySettings.from_environment(
        home=_home(home), mode="production" if production else "embedded", port=port, fetch_slots=fetch_slots,
        parallelism=parallelism, password=password, no_login=no_login, metadata_url=db_url, redis_db=redis_db,
        worker_concurrency=worker_concurrency, gpu_concurrency=gpu_concurrency, heartbeat_timeout=heartbeat_timeout,
        ready_timeout=timeout, overrides=_parse_sets(sets or []),
    )
    began = time.monotonic()
    deployment = up(settings, echo=typer.echo)
    if deployment.already_running:
        typer.echo(f"Airflow is already running for {_relative(deployment.home)} ({describe(deployment)}) at {deployment.url}/")
        if (deployment.mode, deployment.port) != (settings.mode, settings.port):
            typer.echo(f"  (not the {settings.mode} mode on port {settings.port} you asked for: `taisu-etl airflow down` first)")
        typer.echo("  its processes and health: taisu-etl airflow status")
        return
    typer.echo(f"\nAirflow is up in {time.monotonic() - began:.0f} s ({describe(deployment)})")
    typer.echo(f"  UI:        {deployment.url}/")
    if deployment.no_login:
        typer.echo("  log in:    not needed (--no-login: whoever reaches the port is admin)")
    else:
        typer.echo(f"  log in:    user {ADMIN_USER}, password in {_relative(deployment.password_file)}"
                   + ("" if password else "  (choose one: --password or TAISU_AIRFLOW_PASSWORD)"))
    typer.echo(f"  DAGs:      {settings.dags_folder} (unpaused); pool fetch: {settings.fetch_slots} slots")
    typer.echo(f"  logs:      {_relative(deployment.logs_dir)}/ (api-server.log, scheduler.log, ...; task logs in dag_id=*/)")
    typer.echo("  status:    taisu-etl airflow status      stop: taisu-etl airflow down")


@airflow_app.command("down")
def down_cmd(
    home: HomeOpt = None,
    grace: Annotated[float, typer.Option("--grace", help="seconds between SIGTERM and SIGKILL")] = 30.0,
) -> None:
    """Stop exactly what `up` started (and what those processes started), and remove its records."""
    from taisu_etl.deploy.deployment import down

    deployment, stopped = down(_home(home), grace=grace)
    if deployment is None:
        typer.echo(f"no Airflow deployment recorded in {_relative(_home(home))}: nothing to stop")
        return
    running = {p.name for p in stopped}
    for record in deployment.processes:
        state = "stopped" if record.name in running else "had already exited"
        typer.echo(f"  {record.name:<14} pid {record.pid:<8} {state}")
    typer.echo(f"Airflow for {_relative(deployment.home)} is down")


@airflow_app.command("status")
def status_cmd(
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Each started process (alive or dead, pid, log) and Airflow's health; exit 1 unless all is up and healthy."""
    from taisu_etl.deploy.deployment import describe, status

    where = _home(home)
    result = status(where)
    deployment = result.deployment
    if as_json:
        typer.echo(json.dumps({
            "home": str(where), "running": result.running, "healthy": result.healthy,
            "mode": deployment.mode if deployment else None, "url": deployment.url if deployment else None,
            "processes": [{"name": p.name, "pid": p.pid, "alive": result.alive[p.name], "log": str(p.log)}
                          for p in (deployment.processes if deployment else [])],
            "health": result.health, "health_error": result.health_error,
            "workers_answering": sorted(result.workers_answering) if result.workers_answering is not None else None,
        }))
    elif deployment is None:
        typer.echo(f"no Airflow deployment recorded in {_relative(where)} (start one: taisu-etl airflow up)")
    else:
        typer.echo(f"Airflow for {_relative(deployment.home)} ({describe(deployment)}) at {deployment.url}/")
        for record in deployment.processes:
            alive = result.alive[record.name]
            typer.echo(f"  {record.name:<14} {'alive' if alive else 'DEAD':<6} pid {record.pid:<8} log {_relative(record.log)}")
        if result.health is not None:
            parts = [f"{key} {value.get('status')}" for key, value in result.health.items()]
            typer.echo("  health: " + ", ".join(parts))
        elif result.health_error:
            typer.echo(f"  health: the api-server does not answer ({result.health_error})")
        if result.workers_answering is not None:
            for queue, name in deployment.worker_names.items():
                typer.echo(f"  worker {queue}: {'answers' if name in result.workers_answering else 'does NOT answer'} ({name})")
        if not any(result.alive.values()):
            typer.echo("  every recorded process has exited: `taisu-etl airflow down` (or `up`) removes the stale records")
    if not result.healthy:
        raise typer.Exit(1)
