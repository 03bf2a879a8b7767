"""What an Airflow 3.3 deployment of this checkout needs, per mode, as plain data.

Two modes:

- **embedded** (the default; no server to install or start): Airflow's metadata in a SQLite
  file (`<airflow home>/deploy.db`) and the LocalExecutor. Airflow 3 supports exactly this pair
  without a server: its default configuration is `sql_alchemy_conn = sqlite:///.../airflow.db`
  with `executor = LocalExecutor` (config.yml), and the check that Airflow 2 made ("cannot use
  SQLite with the LocalExecutor", `ExecutorLoader.validate_database_executor_compatibility`) is
  gone from 3.3 (the SequentialExecutor, SQLite's old partner, is gone too). It could go because
  in Airflow 3 task processes never open the metadata database: the task supervisor replaces its
  URL with `airflow-db-not-allowed:///` (`airflow.sdk.execution_time.supervisor.block_orm_access`)
  and tasks talk to the api-server's Execution API instead. Only the api-server, scheduler,
  dag-processor and triggerer write the file. What it costs: SQLite takes one writer at a time,
  so those four queue on the file lock (we use WAL, which lets readers go on while one writes,
  and a 60 s busy timeout instead of Python's 5 s, so a busy moment waits instead of failing with
  "database is locked"); `SELECT ... FOR UPDATE SKIP LOCKED` is ignored, so only one scheduler
  may run; the executor's tasks all run on this machine. Airflow calls SQLite "for development
  purposes only" (howto/set-up-database): fine for one person's UI, not for a fleet.
  The metadata file is not the `airflow.db` that `taisu_etl.airflow_local` (`dag.test()`, the
  demo) uses in the same home: a running scheduler would otherwise take up the demo's test runs.
- **production**: Airflow's metadata in Postgres (a database of its own, default `taisu_airflow`
  on 127.0.0.1:5432, created when missing), the CeleryExecutor with Redis (127.0.0.1:6379) as the
  broker and the same Postgres as Celery's result backend, and two Celery workers: one for the
  `default` queue and one for the `gpu` queue (the score and caption tasks go there when the
  recipe says `[score] queue = "gpu"` / `[caption] queue = "gpu"`). Each worker has
  `TAISU_WORKER_NAME` set to its queue, which the ledger records with every event it writes.

Settings that hold in both modes, and why:

- the project's `dags/` folder; no example DAGs; new DAGs start unpaused (else a run triggered
  over the REST API waits forever in "queued" with no hint);
- the api-server on 127.0.0.1 only, and the Execution API URL that task processes call pointing
  at it (Airflow's default assumes port 8080);
- a task whose worker died is noticed in about `heartbeat_timeout` seconds (default 30; Airflow's
  is 300): `[scheduler] task_instance_heartbeat_timeout` is how long the scheduler waits for a
  running task's heartbeat before failing that try (then the task's retries apply); the task
  supervisor, a process apart from the task's code, heartbeats every `[workers]
  min_heartbeat_interval` (5 s; supervisor.py), so a live task has six chances per 30 s;
  `task_instance_heartbeat_timeout_detection_interval` (5 s) is how often the scheduler looks;
- a task process waits up to 30 s (not 5) for an answer of the Execution API: on a busy machine
  a slow answer to "this task starts now" was retried, the retry found the task already running
  (HTTP 400), and the task failed before running a line of its code;
- no log-serving processes (`--skip-serve-logs`): every component runs on this machine and shares
  `<airflow home>/logs`, which the api-server reads directly; two Celery workers on one host
  could not both bind the one `[logging] worker_log_server_port` anyway;
- `[core] parallelism` (task instances at once) is max(4, CPUs), not Airflow's 32: the
  LocalExecutor forks that many worker processes as soon as the scheduler starts;
- DAG files may take their time to import on a busy machine (120 s, not 30 s), and new DAG files
  are picked up within 30 s (`[dag_processor] refresh_interval`, default 300 s).

Every one of them can be overridden: `DeploySettings.overrides` (`--set section.key=value`) wins
over ours; an `AIRFLOW__*` variable of the caller's environment is kept unless we set that key.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from taisu_etl.errors import ConfigError

Mode = Literal["embedded", "production"]

DAGS_FOLDER = Path(__file__).resolve().parent.parent.parent / "dags"
DEFAULT_PORT = 8080
DEFAULT_METADATA_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/taisu_airflow"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
ADMIN_USER = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

# Read by Airflow through `[database] sql_alchemy_connect_args` (an import path): sqlite3's busy
# timeout, so a writer waits for the file lock instead of failing after Python's default 5 s.
SQLITE_CONNECT_ARGS = {"timeout": 60}

# Environment variables of the caller that no Airflow process should see.
_PRIVATE = ("TAISU_AIRFLOW_PASSWORD",)
# Paths of the caller's environment that must mean the same thing in every process, wherever it runs.
_PATH_VARIABLES = ("TAISU_HOME", "TAISU_RECIPE", "TAISU_STORE_ROOT")


def _default_parallelism() -> int:
    return max(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class DeploySettings:
    """One deployment: where it lives, its mode, ports and sizes. Paths are made absolute."""

    home: Path = Path("var/airflow")
    mode: Mode = "embedded"
    port: int = DEFAULT_PORT
    dags_folder: Path = DAGS_FOLDER
    fetch_slots: int = 2
    parallelism: int = field(default_factory=_default_parallelism)
    heartbeat_timeout: int = 30
    password: str | None = None
    no_login: bool = False
    metadata_url: str = DEFAULT_METADATA_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_db: int = 0
    broker_key_prefix: str = ""
    worker_concurrency: int = field(default_factory=lambda: max(2, os.cpu_count() or 1))
    gpu_concurrency: int = 1
    ready_timeout: float = 240.0
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        object.__setattr__(self, "dags_folder", Path(self.dags_folder).expanduser().resolve())
        object.__setattr__(self, "metadata_url", _explicit_driver(self.metadata_url))
        object.__setattr__(self, "overrides", {_setting_key(k): str(v) for k, v in dict(self.overrides).items()})
        if self.mode not in ("embedded", "production"):
            raise ConfigError(f"unknown Airflow deployment mode {self.mode!r}: embedded or production")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port (1-65535)")
        for name in ("fetch_slots", "parallelism", "heartbeat_timeout", "worker_concurrency", "gpu_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.redis_db <= 15:
            raise ConfigError(f"Redis database number {self.redis_db} is out of range (0-15)")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, **values: object) -> "DeploySettings":
        """Defaults, then `TAISU_HOME` / `TAISU_AIRFLOW_*` of `env`, then the keyword values (CLI options)."""
        env = os.environ if env is None else env
        found: dict[str, object] = {"home": Path(env.get("TAISU_HOME") or "var") / "airflow"}
        for key, name, kind in (
            ("port", "TAISU_AIRFLOW_PORT", int),
            ("password", "TAISU_AIRFLOW_PASSWORD", str),
            ("metadata_url", "TAISU_AIRFLOW_DB_URL", str),
            ("redis_url", "TAISU_AIRFLOW_REDIS_URL", str),
            ("redis_db", "TAISU_AIRFLOW_REDIS_DB", int),
        ):
            if env.get(name):
                try:
                    found[key] = kind(env[name])
                except ValueError:
                    raise ConfigError(f"{name}={env[name]!r} is not a number") from None
        found.update({k: v for k, v in values.items() if v is not None})
        return cls(**found)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Where the pid records of the started processes live."""
        return self.home / "run"

    @property
    def sqlite_path(self) -> Path:
        return self.home / "deploy.db"

    @property
    def password_file(self) -> Path:
        # The simple auth manager's own default location (`[core] simple_auth_manager_passwords_file`).
        return self.home / "simple_auth_manager_passwords.json.generated"

    @property
    def broker_url(self) -> str:
        return f"{self.redis_url.rstrip('/')}/{self.redis_db}"

    @property
    def result_backend(self) -> str:
        return f"db+{self.metadata_url}"

    @property
    def broker_transport_options(self) -> dict[str, str]:
        options = {"visibility_timeout": "86400"}
        if self.broker_key_prefix:
            options["global_keyprefix"] = self.broker_key_prefix
        return options

    def worker_name(self, queue: str) -> str:
        """The Celery node name of this deployment's worker for `queue` (unique per host and port)."""
        return f"taisu-{queue}-{self.port}@{socket.gethostname()}"


def _explicit_driver(url: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed; Airflow
    # derives its async URL (postgresql+asyncpg) from this one either way.
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


_KEY = re.compile(r"^(?:AIRFLOW__)?([A-Za-z0-9_]+?)(?:__|\.)([A-Za-z0-9_]+)$")


def _setting_key(key: str) -> str:
    """`scheduler.task_instance_heartbeat_timeout` or `AIRFLOW__SCHEDULER__...` -> the variable's name."""
    match = _KEY.match(key.strip())
    if not match:
        raise ConfigError(f"Airflow setting {key!r} is not section.key (e.g. scheduler.task_instance_heartbeat_timeout)")
    section, name = match.groups()
    return f"AIRFLOW__{section.upper()}__{name.upper()}"


def airflow_settings(settings: DeploySettings) -> dict[str, str]:
    """The `AIRFLOW__*` variables of the deployment's mode (overrides applied), as a plain dict."""
    values = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(settings.no_login),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.port),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.logs_dir),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(settings.heartbeat_timeout),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "180",
    }
    if settings.mode == "embedded":
        values.update({
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{settings.sqlite_path}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "taisu_etl.deploy.settings.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "taisu_etl.deploy.settings.SQLITE_CONNECT_ARGS",
        })
    else:
        values.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": settings.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": settings.result_backend,
            # One task per worker process at a time: a long score task never holds a second one back.
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
        })
        for key, value in settings.broker_transport_options.items():
            values[f"AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__{key.upper()}"] = value
    values.update(settings.overrides)
    return values


def process_environment(settings: DeploySettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process of the deployment.

    The caller's environment passes through (the `TAISU_*` settings: ledger URL, store, S3,
    recipe), with its relative paths made absolute; our Airflow settings replace any of the
    caller's for the same keys; the deploy tool's own password never reaches a process.
    """
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in _PRIVATE or name.startswith("_AIRFLOW"):
            del env[name]
    for name in _PATH_VARIABLES:
        if env.get(name):
            env[name] = str(Path(env[name]).expanduser().resolve())
    # What the CLI would use from here: tasks then find the same ledger and store as `taisu-etl status`.
    env.setdefault("TAISU_HOME", str(Path("var").resolve()))
    env["AIRFLOW_HOME"] = str(settings.home)
    env["AIRFLOW_CONFIG"] = str(settings.home / "airflow.cfg")
    env.setdefault("HF_HUB_OFFLINE", "1")  # models come from local files: nothing is downloaded at run time
    env.update(airflow_settings(settings))
    return env
