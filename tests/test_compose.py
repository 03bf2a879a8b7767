"""docker-compose.yml and its Dockerfile cannot be built or started here (no Docker engine): check
what can be checked by reading them, and hold the compose file's Airflow settings equal to those
of the deployment `taisu-etl airflow up --production` runs and the tests exercise."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GPU_OVERRIDE = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = {name: svc for name, svc in SERVICES.items() if name.startswith("airflow")}
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

IMAGE = "taisu-etl-airflow:3.3.2"
GPU_IMAGE = "taisu-etl-airflow:3.3.2-gpu"
WORKERS = {"default": "airflow-worker", "gpu": "airflow-worker-gpu"}

# Airflow settings whose values name a place, so a container must set them differently from the
# processes `taisu-etl airflow up` starts on one machine: compared in kind below, not in value.
PLACE_DEPENDENT = {
    "AIRFLOW__CORE__DAGS_FOLDER": "the DAGs baked into the image (/opt/taisu/dags) instead of the checkout's dags/",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "the api-server's name on the compose network instead of 127.0.0.1",
    "AIRFLOW__API__HOST": "every interface inside the api-server's container; the host publishes 127.0.0.1 only",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "the logs volume every Airflow container mounts, instead of <airflow home>/logs",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "the postgres service instead of 127.0.0.1",
    "AIRFLOW__CELERY__BROKER_URL": "the redis service instead of 127.0.0.1",
    "AIRFLOW__CELERY__RESULT_BACKEND": "the postgres service instead of 127.0.0.1",
    "AIRFLOW__CORE__PARALLELISM": "sized to the host: the deploy tool takes this machine's core count",
}
# Airflow settings only the containers need.
COMPOSE_ONLY = {
    "AIRFLOW__API_AUTH__JWT_SECRET": "the api-server and the workers sign and check task tokens in separate containers",
}


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service]["environment"].items()}


def _command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _production_settings() -> dict[str, str]:
    from taisu_etl.deploy.settings import DeploySettings, airflow_settings

    return airflow_settings(DeploySettings(mode="production"))


def test_compose_has_the_production_services() -> None:
    expected = {"postgres", "minio", "minio-init", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
    assert expected <= set(SERVICES)
    for name, svc in SERVICES.items():
        assert "profiles" not in svc, f"{name} must start with `docker compose up`, as the local deployment starts it"
        for dep in svc.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
    assert set(GPU_OVERRIDE["services"]) <= set(SERVICES)


def test_every_airflow_service_runs_the_image_built_from_the_dockerfile() -> None:
    for name, svc in AIRFLOW_SERVICES.items():
        build = svc.get("build")
        assert build and build["context"] == "." and build["dockerfile"] == "Dockerfile", f"{name} is not built from ./Dockerfile"
        variant = "gpu" if name == WORKERS["gpu"] else "cpu"
        assert build["args"]["TORCH"] == variant, name
        assert svc["image"] == (GPU_IMAGE if variant == "gpu" else IMAGE), name
        env = _env(name)
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in env, f"{name} installs packages at start-up"
        assert not any(str(v).split(":")[0] in (".", "./") for v in svc.get("volumes", [])), \
            f"{name} mounts the checkout: the image already holds the project and its DAGs"
        assert env["TAISU_STORE"] == "s3" and env["TAISU_DB_URL"].startswith("postgresql://")
    # Every service but the gpu worker shares one image (one build).
    assert {svc["image"] for name, svc in AIRFLOW_SERVICES.items() if name != WORKERS["gpu"]} == {IMAGE}


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, f"the Dockerfile declares no default for ARG {name}"
    return match.group(1)


def _pins(extra: str) -> dict[str, str]:
    pins = {}
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name, _, version = req.partition("==")
        pins[name.split("[")[0]] = version
    return pins


def test_the_dockerfile_extends_the_airflow_image_that_the_project_pins() -> None:
    airflow_pin = _pins("airflow")["apache-airflow"]
    assert _dockerfile_arg("AIRFLOW_IMAGE") == f"apache/airflow:{airflow_pin}-python3.11"
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}$", DOCKERFILE, re.M)


def _pip_installs() -> list[str]:
    """The pip commands of the Dockerfile's RUN instructions, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(0) for m in re.finditer(r"pip install[^&\n]*", joined)]


def test_the_dockerfile_installs_the_project_with_the_pinned_cpu_torch_at_build_time() -> None:
    ml = _pins("ml")
    installs = _pip_installs()
    assert installs, "no pip install in the Dockerfile"
    torch_install = next(i for i in installs if "torch==" in i)
    assert f"torch=={ml['torch']}" in torch_install and f"torchvision=={ml['torchvision']}" in torch_install
    assert "https://download.pytorch.org/whl/cpu" in DOCKERFILE and _dockerfile_arg("TORCH") == "cpu"
    project = next(i for i in installs if "[ml,airflow]" in i)
    assert "--constraint" in project
    for install in installs:
        # The official image's rule: pin Airflow in every pip command, so nothing moves it.
        assert '"apache-airflow==${AIRFLOW_VERSION}"' in install, install
    # pip runs as the airflow user (the image refuses pip as root), after the apt step as root.
    users = [(m.start(), m.group(1)) for m in re.finditer(r"^USER (\S+)$", DOCKERFILE, re.M)]
    first_pip = DOCKERFILE.index("pip install")
    assert [u for pos, u in users if pos < first_pip][-1] == "airflow"
    assert users[-1][1] == "airflow"
    for name, svc in AIRFLOW_SERVICES.items():
        for cmd in (_command(name) if "command" in svc else []):
            assert "pip" not in cmd, f"{name} installs packages at start-up"


# Debian packages of .ci/system-deps that only the test suite uses, left out of the image.
TEST_ONLY_PACKAGES = {"chromium": "the browser of the Airflow UI tests; no service runs it"}


def test_the_image_has_the_debian_packages_and_the_dags() -> None:
    needed = set(re.findall(r"dpkg -s (\S+)", (ROOT / ".ci" / "system-deps").read_text())) - set(TEST_ONLY_PACKAGES)
    assert needed
    apt = re.search(r"apt-get install -y --no-install-recommends ([^&\\]+)", DOCKERFILE)
    assert apt and needed <= set(apt.group(1).split()), f"the image lacks Debian packages of .ci/system-deps: {sorted(needed)}"
    assert re.search(r"^COPY --chown=airflow:0 dags /opt/taisu/dags$", DOCKERFILE, re.M)
    for name in AIRFLOW_SERVICES:
        assert _env(name)["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/taisu/dags"


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allow-list: everything else stays out"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE, re.M):
        for source in line.split():
            assert source.rstrip("/") in allowed, f"the Dockerfile copies {source}, which .dockerignore leaves out"
            assert (ROOT / source).exists(), source
    assert (ROOT / PYPROJECT["project"]["readme"]).name in allowed


def test_workers_take_the_default_and_gpu_queues_as_the_local_deployment_does() -> None:
    from taisu_etl.deploy.deployment import WORKER_QUEUES
    from taisu_etl.deploy.settings import DeploySettings

    assert set(WORKER_QUEUES) == set(WORKERS)
    for queue, service in WORKERS.items():
        cmd = _command(service)
        assert cmd[:2] == ["celery", "worker"], service
        assert cmd[cmd.index("--queues") + 1] == queue, service
        assert _env(service)["TAISU_WORKER_NAME"] == queue, service
        for flag in ("--skip-serve-logs", "--without-mingle", "--without-gossip"):
            assert flag in cmd, f"{service} lacks {flag}"
        assert SERVICES[service]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    gpu = _command(WORKERS["gpu"])
    assert int(gpu[gpu.index("--concurrency") + 1]) == DeploySettings().gpu_concurrency
    # Score and caption go to the gpu worker, as in the end-to-end test of the local deployment.
    for name in AIRFLOW_SERVICES:
        assert _env(name)["TAISU_SCORE__QUEUE"] == _env(name)["TAISU_CAPTION__QUEUE"] == "gpu"
    devices = GPU_OVERRIDE["services"][WORKERS["gpu"]]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"


def test_the_init_job_migrates_both_schemas_and_creates_the_fetch_pool() -> None:
    from taisu_etl.deploy.deployment import FETCH_POOL
    from taisu_etl.deploy.settings import DeploySettings

    script = " ".join(_command("airflow-init"))
    assert "airflow db migrate" in script
    assert "taisu-etl db upgrade" in script
    assert re.search(rf"airflow pools set {FETCH_POOL} {DeploySettings().fetch_slots} ", script), script
    for name in set(AIRFLOW_SERVICES) - {"airflow-init"}:
        assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name


def test_airflow_settings_are_those_of_the_local_production_deployment() -> None:
    production = _production_settings()
    for name in AIRFLOW_SERVICES:
        env = {k: v for k, v in _env(name).items() if k.startswith("AIRFLOW__")}
        for key, value in production.items():
            assert key in env, f"{name} lacks {key} (the local deployment sets {value!r})"
            if key not in PLACE_DEPENDENT:
                assert env[key] == value, f"{name}: {key} is {env[key]!r}, the local deployment's is {value!r}"
        extra = set(env) - set(production) - set(COMPOSE_ONLY)
        assert not extra, f"{name} sets {sorted(extra)}, which the local deployment does not: add them there or to COMPOSE_ONLY"
        # The place-dependent values still say the same things about the same kinds of places.
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert production["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + production["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:{}/execution/".format(env["AIRFLOW__API__PORT"])
        assert int(env["AIRFLOW__CORE__PARALLELISM"]) >= 1
    assert set(PLACE_DEPENDENT) <= set(production), "a listed exception the local deployment no longer sets"


def test_published_ports_bind_to_loopback_only() -> None:
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert SERVICES["airflow-apiserver"]["ports"] == ["127.0.0.1:{0}:{0}".format(_env("airflow-apiserver")["AIRFLOW__API__PORT"])]


def test_ledger_database_is_created_by_the_init_script() -> None:
    init = (ROOT / "sql" / "docker-init.sql").read_text()
    assert "CREATE DATABASE taisu" in init
    mount = [v for v in SERVICES["postgres"]["volumes"] if "docker-init.sql" in v]
    assert mount, "postgres must mount sql/docker-init.sql"
    assert "postgres:5432/taisu" in _env("airflow-scheduler")["TAISU_DB_URL"]


def _compose_plugin() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client here")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client here has no compose plugin")


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]], ids=["base", "gpu"])
def test_docker_compose_config_when_the_plugin_exists(files: list[str]) -> None:
    _compose_plugin()
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    res = subprocess.run(["docker", "compose", *args, "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
