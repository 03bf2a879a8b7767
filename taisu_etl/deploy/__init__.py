"""A real Airflow 3 deployment of this checkout on this machine: `taisu-etl airflow up|down|status`.

- `settings`: what each mode needs (`DeploySettings`, and `airflow_settings()`, the `AIRFLOW__*`
  variables of a mode as a plain dict, shared with docker-compose.yml's test);
- `processes`: start, track (pid + start time) and stop process groups;
- `metadata`: Airflow's own database (created, migrated);
- `broker`: the Redis broker and the Celery workers' answers;
- `api`: a small client of Airflow's REST API (`/api/v2`, JWT from `/auth/token`);
- `deployment`: `up`, `down`, `status` and `restart_worker`, built from the above;
- `cli`: the thin typer sub-app.

Nothing here imports Airflow: it runs Airflow's own commands from the same virtual environment.
"""

from taisu_etl.deploy.deployment import DeployError, Deployment, DeploymentStatus, down, restart_worker, status, up
from taisu_etl.deploy.settings import DeploySettings, airflow_settings, process_environment

__all__ = [
    "DeployError",
    "DeploySettings",
    "Deployment",
    "DeploymentStatus",
    "airflow_settings",
    "down",
    "process_environment",
    "restart_worker",
    "status",
    "up",
]
