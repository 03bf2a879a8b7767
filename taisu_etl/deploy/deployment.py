"""`up`, `down` and `status` of the Airflow deployment of this checkout.

`up` migrates Airflow's metadata database, starts the api-server (127.0.0.1 only), scheduler,
dag-processor and triggerer (and, in production mode, one Celery worker for the `default` queue
and one for `gpu`), each in its own process group with its output in `<airflow home>/logs/NAME.log`,
records each by pid and start time under `<airflow home>/run/`, creates the `fetch` pool, and waits
(bounded) until `/api/v2/monitor/health` reports the scheduler, dag processor and triggerer
healthy with heartbeats from this start and both workers answer a ping. If any of that fails it
stops everything it started and says which process failed, with the end of its log.

`restart_worker` starts a production deployment's Celery worker again after it died (its machine,
a kill), the way `up` started it, in place of its record.

`down` stops exactly the recorded processes (and whatever they started) and removes the records;
a record whose process is gone (or whose pid now belongs to another process) counts as dead and
is removed, never trusted. Both hold a lock on the home, so two `up`s cannot race.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from taisu_etl.deploy import metadata
from taisu_etl.deploy.api import AirflowApi, ApiError
from taisu_etl.deploy.processes import PidRecords, ProcessRecord, log_tail, spawn, stop
from taisu_etl.deploy.settings import ADMIN_USER, DeploySettings, process_environment
from taisu_etl.errors import TaisuError

FETCH_POOL = "fetch"
HEALTH_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
WORKER_QUEUES = ("default", "gpu")

Echo = Callable[[str], None]


class DeployError(TaisuError):
    """The deployment could not be started, stopped or read; the message says what to do."""


@dataclass
class Deployment:
    """A deployment as `up` recorded it, with its processes."""

    home: Path
    mode: str
    url: str
    port: int
    started_at: float
    processes: list[ProcessRecord]
    password_file: Path
    no_login: bool = False
    broker_url: str | None = None
    broker_transport_options: dict[str, str] = field(default_factory=dict)
    worker_names: dict[str, str] = field(default_factory=dict)
    ready_seconds: float | None = None
    already_running: bool = False

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def process(self, name: str) -> ProcessRecord:
        return next(p for p in self.processes if p.name == name)

    def api(self) -> AirflowApi:
        """A REST client logged in as the deployment's admin user."""
        return AirflowApi(self.url, ADMIN_USER, read_password(self.password_file))

    def _to_json(self) -> str:
        return json.dumps({
            "mode": self.mode, "url": self.url, "port": self.port, "started_at": self.started_at,
            "password_file": str(self.password_file), "no_login": self.no_login, "broker_url": self.broker_url,
            "broker_transport_options": self.broker_transport_options, "worker_names": self.worker_names,
            "ready_seconds": self.ready_seconds,
        }, indent=1)


@dataclass
class DeploymentStatus:
    """What `status` found: each recorded process alive or not, and Airflow's health."""

    deployment: Deployment | None
    alive: dict[str, bool]
    health: dict[str, Any] | None = None
    health_error: str | None = None
    workers_answering: set[str] | None = None

    @property
    def running(self) -> bool:
        return bool(self.alive) and all(self.alive.values())

    @property
    def healthy(self) -> bool:
        if not self.running or self.health is None:
            return False
        if any(self.health.get(key, {}).get("status") != "healthy" for key in ("metadatabase", *HEALTH_COMPONENTS.values())):
            return False
        if self.deployment is not None and self.deployment.worker_names:
            return self.workers_answering == set(self.deployment.worker_names.values())
        return True


def airflow_command() -> Path:
    """The `airflow` command of the Python environment running this code."""
    path = Path(sys.executable).with_name("airflow")
    if not path.exists():
        raise DeployError(f"Airflow is not installed in {Path(sys.executable).parent.parent}: install the project's "
                          "airflow extra (make install)")
    return path


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold the deployment's lock: one `up` or `down` at a time per home."""
    run_dir = home / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _record_path(home: Path) -> Path:
    return home / "run" / "deployment.json"


def load(home: Path) -> Deployment | None:
    """The deployment recorded under `home` (an Airflow home), or None if nothing is recorded."""
    home = Path(home).resolve()
    processes = PidRecords(home / "run").load()
    path = _record_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    except ValueError:
        path.unlink(missing_ok=True)
        data = None
    if data is None and not processes:
        return None
    data = data or {"mode": "unknown", "url": "", "port": 0, "started_at": 0.0,
                    "password_file": str(home / "simple_auth_manager_passwords.json.generated")}
    return Deployment(home=home, mode=data["mode"], url=data["url"], port=int(data["port"]),
                      started_at=float(data["started_at"]), processes=processes,
                      password_file=Path(data["password_file"]), no_login=bool(data.get("no_login", False)),
                      broker_url=data.get("broker_url"), broker_transport_options=dict(data.get("broker_transport_options") or {}),
                      worker_names=dict(data.get("worker_names") or {}), ready_seconds=data.get("ready_seconds"))


def _forget(deployment: Deployment) -> None:
    records = PidRecords(deployment.home / "run")
    for record in deployment.processes:
        records.remove(record)
    _record_path(deployment.home).unlink(missing_ok=True)


def read_password(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())[ADMIN_USER])
    except FileNotFoundError:
        raise DeployError(f"no password file {path}: run `taisu-etl airflow up` (it writes one)") from None
    except (ValueError, KeyError, TypeError):
        raise DeployError(f"{path} holds no password for {ADMIN_USER!r}: delete the file and run "
                          "`taisu-etl airflow up` again (or give --password)") from None


def _ensure_password(settings: DeploySettings) -> None:
    """The simple auth manager's password file with our admin user: kept, or set from `settings.password`."""
    path = settings.password_file
    passwords: dict[str, str] = {}
    if path.exists():
        try:
            passwords = dict(json.loads(path.read_text() or "{}"))
        except ValueError:
            raise DeployError(f"{path} is not JSON: delete it and run `taisu-etl airflow up` again") from None
    if settings.password is not None:
        passwords[ADMIN_USER] = settings.password
    elif ADMIN_USER not in passwords:
        passwords[ADMIN_USER] = secrets.token_urlsafe(12)
    else:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(passwords) + "\n")
    os.chmod(path, 0o600)


def port_taken(port: int) -> bool:
    """True when 127.0.0.1:`port` cannot be bound (something listens there, on it or on 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _commands(settings: DeploySettings, airflow: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    cmd = str(airflow)
    commands = [
        ("api-server", [cmd, "api-server", "--host", "127.0.0.1", "--port", str(settings.port)], {}),
        ("scheduler", [cmd, "scheduler", "--skip-serve-logs"], {}),
        ("dag-processor", [cmd, "dag-processor"], {}),
        ("triggerer", [cmd, "triggerer", "--skip-serve-logs"], {}),
    ]
    if settings.mode == "production":
        for queue, concurrency in zip(WORKER_QUEUES, (settings.worker_concurrency, settings.gpu_concurrency)):
            commands.append((f"worker-{queue}", [
                cmd, "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
                "--celery-hostname", settings.worker_name(queue), "--skip-serve-logs", "--without-mingle", "--without-gossip",
            ], {"TAISU_WORKER_NAME": queue}))
    return commands


def _runs_tasks(name: str) -> bool:
    return name == "scheduler" or name.startswith("worker-")


def _describe_failure(what: str, record: ProcessRecord) -> str:
    return f"{what}; the end of its log {record.log}:\n{log_tail(record.log, 15)}"


def _heartbeat_since(component: Mapping[str, Any], since: datetime) -> bool:
    if component.get("status") != "healthy":
        return False
    stamp = next((v for k, v in component.items() if k.startswith("latest_") and v), None)
    if stamp is None:
        return False
    beat = datetime.fromisoformat(str(stamp))
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    return beat >= since


def _check_alive(deployment: Deployment) -> None:
    for record in deployment.processes:
        if not record.alive():
            raise DeployError(_describe_failure(f"the {record.name} process exited during start-up", record))


def _wait_api(settings: DeploySettings, deployment: Deployment, deadline: float, say: Echo) -> None:
    """Wait until the api-server answers (both its public and its Execution API), then make the pool."""
    api = deployment.api()
    execution = AirflowApi(f"{deployment.url}/execution")
    while True:
        _check_alive(deployment)
        try:
            api.health()
            execution.get_public("/health")
            break
        except ApiError:
            if time.monotonic() > deadline:
                raise DeployError(_describe_failure(f"the api-server does not answer after {settings.ready_timeout:.0f} s",
                                                    deployment.process("api-server"))) from None
            time.sleep(1.0)
    api.ensure_pool(FETCH_POOL, settings.fetch_slots, "downloads: the fetch tasks (slots = shards downloading at once)")
    say(f"api-server answers at {deployment.url}; pool {FETCH_POOL!r}: {settings.fetch_slots} slots")


def _wait_healthy(settings: DeploySettings, deployment: Deployment, deadline: float) -> None:
    """Return once every component is healthy; raise DeployError naming the first one that is not."""
    from taisu_etl.deploy.broker import ping_workers

    api = AirflowApi(deployment.url)
    # A previous deployment's jobs stay in the metadata database: only heartbeats from this start count.
    since = datetime.fromtimestamp(deployment.started_at, timezone.utc) - timedelta(seconds=2)
    while True:
        _check_alive(deployment)
        try:
            health = api.health()
        except ApiError:
            health = {}
        pending = [name for name, key in HEALTH_COMPONENTS.items() if not _heartbeat_since(health.get(key) or {}, since)]
        if not pending and deployment.worker_names:
            assert deployment.broker_url is not None
            answering = ping_workers(deployment.broker_url, deployment.broker_transport_options,
                                     list(deployment.worker_names.values()))
            pending = [f"worker-{q}" for q, name in deployment.worker_names.items() if name not in answering]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DeployError(_describe_failure(f"the {pending[0]} is not healthy after {settings.ready_timeout:.0f} s",
                                                deployment.process(pending[0])))
        time.sleep(1.0)


def up(settings: DeploySettings, *, env: Mapping[str, str] | None = None, echo: Echo | None = None) -> Deployment:
    """Start the deployment and wait until it is healthy; if it already runs, start nothing and return it.

    `env` is the environment the processes inherit (default: this process's); `echo` gets
    progress lines. The returned deployment's `already_running` says which of the two happened.
    """
    began = time.monotonic()

    def say(line: str) -> None:  # progress, with the seconds since `up` began
        if echo is not None:
            echo(f"[{time.monotonic() - began:3.0f} s] {line}")

    airflow = airflow_command()
    with _locked(settings.home):
        existing = load(settings.home)
        if existing is not None and existing.processes:
            dead = [p for p in existing.processes if not p.alive()]
            if not dead:
                existing.already_running = True
                return existing
            if len(dead) < len(existing.processes):
                names = ", ".join(f"{p.name} (log {p.log})" for p in dead)
                raise DeployError(f"the deployment in {settings.home} is only partly running: {names} exited; "
                                  "run `taisu-etl airflow down`, then `up` again")
            say(f"removed the records of a deployment whose processes had all exited ({', '.join(p.name for p in dead)})")
            stop(dead)  # leaves only what a dead leader's group left behind
            _forget(existing)
        elif existing is not None:
            _forget(existing)
        return _start(settings, airflow, env, say)


def _start(settings: DeploySettings, airflow: Path, env: Mapping[str, str] | None, say: Echo) -> Deployment:
    if port_taken(settings.port):
        raise DeployError(f"port {settings.port} on 127.0.0.1 is taken by another program: choose another with "
                          "--port (or TAISU_AIRFLOW_PORT)")
    if settings.mode == "production":
        from taisu_etl.deploy.broker import check_redis

        check_redis(settings.broker_url)
        if metadata.ensure_postgres_database(settings.metadata_url):
            say(f"created the Postgres database for Airflow's metadata: {_safe_url(settings.metadata_url)}")
    process_env = process_environment(settings, env)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    _ensure_password(settings)
    started = time.time()
    say(f"migrating Airflow's metadata database ({_describe_metadata(settings)}); log: {settings.logs_dir / 'db-migrate.log'}")
    metadata.migrate(airflow, process_env, settings.logs_dir / "db-migrate.log")
    if settings.mode == "embedded":
        metadata.use_write_ahead_log(settings.sqlite_path)
    # Every DAG reads the ledger, and the scheduled ones (recheck, maintenance) run as soon as
    # they are unpaused: the ledger's schema must be there first, as `taisu-etl db upgrade` makes it.
    say(metadata.upgrade_ledger(process_env))
    deployment = Deployment(
        home=settings.home, mode=settings.mode, url=settings.url, port=settings.port, started_at=time.time(),
        processes=[], password_file=settings.password_file, no_login=settings.no_login,
    )
    if settings.mode == "production":
        deployment.broker_url = settings.broker_url
        deployment.broker_transport_options = settings.broker_transport_options
        deployment.worker_names = {q: settings.worker_name(q) for q in WORKER_QUEUES}
    _record_path(settings.home).write_text(deployment._to_json())
    records = PidRecords(settings.run_dir)
    cwd = Path.cwd()

    def start(commands: list[tuple[str, list[str], dict[str, str]]]) -> list[ProcessRecord]:
        started = []
        for name, command, extra in commands:
            record = spawn(name, command, env={**process_env, **extra}, cwd=cwd, log=settings.logs_dir / f"{name}.log")
            records.save(record)
            deployment.processes.append(record)
            started.append(record)
        return started

    # The processes that run tasks start only once the Execution API answers: a task started
    # before that fails (its first call times out, and the retry finds the task already running).
    commands = _commands(settings, airflow)
    task_runners = [c for c in commands if _runs_tasks(c[0])]
    deadline = time.monotonic() + settings.ready_timeout
    try:
        first = start([c for c in commands if c not in task_runners])
        say("started " + ", ".join(f"{p.name} ({p.pid})" for p in first) + "; waiting for the api-server")
        _wait_api(settings, deployment, deadline, say)
        then = start(task_runners)
        say("started " + ", ".join(f"{p.name} ({p.pid})" for p in then) + "; waiting until healthy")
        _wait_healthy(settings, deployment, deadline)
    except BaseException:
        _stop_in_order(deployment.processes, 10.0)
        _forget(deployment)
        raise
    deployment.ready_seconds = round(time.time() - started, 1)
    _record_path(settings.home).write_text(deployment._to_json())
    return deployment


def restart_worker(settings: DeploySettings, queue: str, *, env: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> ProcessRecord:
    """Start the production deployment's Celery worker for `queue` again, after it died (its machine, a kill).

    The new worker runs the command `up` ran, with the environment `up` built from `env` (give the
    same `env` as to `up`), logs to the same file, and its record replaces the dead one, so `down`
    stops it. Whatever the dead worker's process group left behind is stopped first. Refuses when
    that worker still runs; returns once it answers a ping through the broker (at most `timeout`
    seconds, default `settings.ready_timeout`), else stops it and raises DeployError.
    """
    from taisu_etl.deploy.broker import ping_workers

    name = f"worker-{queue}"
    with _locked(settings.home):
        deployment = load(settings.home)
        if deployment is None or deployment.mode != "production" or queue not in deployment.worker_names:
            raise DeployError(f"no production deployment with a {queue!r} worker is recorded in {settings.home}: "
                              "run `taisu-etl airflow up --production`")
        old = next((p for p in deployment.processes if p.name == name), None)
        if old is not None and old.alive():
            raise DeployError(f"the {name} process ({old.pid}) is running: nothing to restart")
        if old is not None:
            stop([old])  # only what its group left behind: the recorded process itself is gone
        command, extra = next((c, e) for n, c, e in _commands(settings, airflow_command()) if n == name)
        process_env = {**process_environment(settings, env), **extra}
        record = spawn(name, command, env=process_env, cwd=Path.cwd(), log=settings.logs_dir / f"{name}.log")
        PidRecords(settings.run_dir).save(record)
    assert deployment.broker_url is not None
    worker = deployment.worker_names[queue]
    limit = settings.ready_timeout if timeout is None else timeout
    deadline = time.monotonic() + limit
    while worker not in ping_workers(deployment.broker_url, deployment.broker_transport_options, [worker]):
        if not record.alive() or time.monotonic() > deadline:
            what = "exited" if not record.alive() else f"does not answer a ping after {limit:.0f} s"
            stop([record], grace=10.0)
            raise DeployError(_describe_failure(f"the restarted {name} {what}", record))
        time.sleep(1.0)
    return record


def down(home: Path, *, grace: float = 30.0) -> tuple[Deployment | None, list[ProcessRecord]]:
    """Stop what `up` started under `home` and remove its records.

    Returns the deployment as recorded (None if there was none) and the processes that were still
    running when `down` came (the others had already exited).
    """
    home = Path(home).resolve()
    with _locked(home):
        deployment = load(home)
        if deployment is None:
            return None, []
        stopped = _stop_in_order(deployment.processes, grace)
        _forget(deployment)
        return deployment, stopped


def _stop_in_order(processes: list[ProcessRecord], grace: float) -> list[ProcessRecord]:
    """The processes that run tasks first, while the api-server still answers their supervisors'
    last calls (a task's end is recorded at once instead of by a heartbeat timeout later, and a
    supervisor does not wait out its retries against a server that is gone); then the rest."""
    runners = [p for p in processes if _runs_tasks(p.name)]
    rest = [p for p in processes if p not in runners]
    return stop(runners, grace=grace) + stop(list(reversed(rest)), grace=grace)


def status(home: Path, *, check_health: bool = True) -> DeploymentStatus:
    """Each recorded process alive or dead, and (when any runs) Airflow's health and the workers' ping."""
    deployment = load(Path(home))
    if deployment is None:
        return DeploymentStatus(deployment=None, alive={})
    result = DeploymentStatus(deployment=deployment, alive={p.name: p.alive() for p in deployment.processes})
    if check_health and any(result.alive.values()) and deployment.url:
        try:
            result.health = AirflowApi(deployment.url).health()
        except ApiError as exc:
            result.health_error = str(exc)
        if deployment.worker_names and deployment.broker_url:
            from taisu_etl.deploy.broker import ping_workers

            result.workers_answering = ping_workers(deployment.broker_url, deployment.broker_transport_options,
                                                    list(deployment.worker_names.values()))
    return result


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _describe_metadata(settings: DeploySettings) -> str:
    if settings.mode == "embedded":
        return f"SQLite {settings.sqlite_path}"
    return f"Postgres {_safe_url(settings.metadata_url)}"


def describe(deployment: Deployment) -> str:
    """The mode in words, for people."""
    if deployment.mode == "embedded":
        return "embedded: SQLite metadata, LocalExecutor"
    if deployment.mode == "production":
        return "production: Postgres metadata, CeleryExecutor, Celery workers for the default and gpu queues"
    return deployment.mode
