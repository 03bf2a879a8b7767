"""The settings each deployment mode gives Airflow, and the environment its processes get (no Airflow needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taisu_etl.deploy.settings import DAGS_FOLDER, DeploySettings, airflow_settings, process_environment
from taisu_etl.errors import ConfigError


def test_embedded_mode_is_sqlite_and_the_local_executor_with_what_the_dags_need(tmp_path: Path) -> None:
    settings = DeploySettings(home=tmp_path / "airflow", port=18123, parallelism=3)
    values = airflow_settings(settings)
    assert values["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow' / 'deploy.db'}"
    assert values["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER) == str(Path(__file__).resolve().parents[2] / "dags")
    assert values["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert values["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert values["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert values["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert values["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    assert values["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "30"
    assert not any(key.startswith("AIRFLOW__CELERY") for key in values)


def test_production_mode_is_postgres_celery_on_redis_with_postgres_results(tmp_path: Path) -> None:
    settings = DeploySettings(home=tmp_path, mode="production", metadata_url="postgresql://u:pw@127.0.0.1:5432/af",
                              redis_db=5, broker_key_prefix="t1:")
    values = airflow_settings(settings)
    assert values["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # SQLAlchemy 2.1 would read a bare postgresql:// as psycopg 3, which is not installed.
    assert values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://u:pw@127.0.0.1:5432/af"
    assert values["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://u:pw@127.0.0.1:5432/af"
    assert values["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/5"
    assert values["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] == "t1:"
    assert values["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"
    assert settings.worker_name("gpu").startswith(f"taisu-gpu-{settings.port}@")


def test_overrides_win_and_must_name_a_section_and_key(tmp_path: Path) -> None:
    settings = DeploySettings(home=tmp_path, overrides={"scheduler.task_instance_heartbeat_timeout": "90",
                                                       "AIRFLOW__CORE__PARALLELISM": "7"})
    values = airflow_settings(settings)
    assert values["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "90"
    assert values["AIRFLOW__CORE__PARALLELISM"] == "7"
    with pytest.raises(ConfigError, match="section.key"):
        DeploySettings(home=tmp_path, overrides={"heartbeat": "1"})


def test_processes_get_the_callers_taisu_settings_but_not_the_deploy_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    caller = {
        "PATH": "/usr/bin", "TAISU_DB_URL": "postgresql://ledger@127.0.0.1/taisu", "TAISU_STORE": "s3",
        "TAISU_S3_ENDPOINT": "http://127.0.0.1:9000", "TAISU_RECIPE": "recipes/r.toml", "TAISU_HOME": "data",
        "TAISU_AIRFLOW_PASSWORD": "secret", "AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor",
        "AIRFLOW__WEBSERVER__SOMETHING": "kept", "_AIRFLOW_PROCESS_CONTEXT": "client",
    }
    settings = DeploySettings(home=tmp_path / "af")
    env = process_environment(settings, caller)
    assert env["TAISU_DB_URL"] == caller["TAISU_DB_URL"] and env["TAISU_STORE"] == "s3"
    assert env["TAISU_S3_ENDPOINT"] == caller["TAISU_S3_ENDPOINT"]
    assert env["TAISU_RECIPE"] == str(tmp_path / "recipes" / "r.toml")  # relative paths mean the same everywhere
    assert env["TAISU_HOME"] == str(tmp_path / "data")
    assert "TAISU_AIRFLOW_PASSWORD" not in env and "_AIRFLOW_PROCESS_CONTEXT" not in env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the mode's own settings win
    assert env["AIRFLOW__WEBSERVER__SOMETHING"] == "kept"
    assert env["AIRFLOW_HOME"] == str(tmp_path / "af") and env["HF_HUB_OFFLINE"] == "1"
    assert process_environment(settings, {"PATH": "/usr/bin"})["TAISU_HOME"] == str(tmp_path / "var")


def test_settings_from_the_environment_and_their_errors(tmp_path: Path) -> None:
    settings = DeploySettings.from_environment({"TAISU_HOME": str(tmp_path), "TAISU_AIRFLOW_PORT": "9191",
                                                "TAISU_AIRFLOW_REDIS_DB": "3"}, mode="production", port=None)
    assert (settings.home, settings.port, settings.redis_db, settings.mode) == (tmp_path / "airflow", 9191, 3, "production")
    assert DeploySettings.from_environment({"TAISU_AIRFLOW_PORT": "9191"}, port=8081).port == 8081
    with pytest.raises(ConfigError, match="TAISU_AIRFLOW_PORT"):
        DeploySettings.from_environment({"TAISU_AIRFLOW_PORT": "eighty"})
    with pytest.raises(ConfigError, match="0-15"):
        DeploySettings(home=tmp_path, redis_db=16)
    with pytest.raises(ConfigError, match="fetch-slots"):
        DeploySettings(home=tmp_path, fetch_slots=0)
