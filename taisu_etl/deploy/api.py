"""A small client of Airflow 3's REST API (`/api/v2`), for `up` and the tests.

Authentication is the simple auth manager's: `POST /auth/token` with a user name and password
returns a JWT, sent as `Authorization: Bearer ...`; `/api/v2/monitor/health` needs none.
Standard library only (urllib), so the project needs no HTTP client of its own for it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from taisu_etl.errors import TaisuError


class ApiError(TaisuError):
    """Airflow's API answered with an error, or did not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


FINISHED_RUN_STATES = ("success", "failed")


class AirflowApi:
    """Calls to one api-server; logs in on first need and again when the token has expired."""

    def __init__(self, base_url: str, username: str | None = None, password: str | None = None, *,
                 timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                 params: Mapping[str, Any] | None = None) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            if exc.code == 401 and auth and self._token is not None:
                self._token = None  # expired: log in again, once
                return self._request(method, path, body, auth=auth, params=params)
            raise ApiError(f"{method} {url}: HTTP {exc.code} {detail}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"{method} {url}: no answer ({reason})") from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            if not self.username or self.password is None:
                raise ApiError("no Airflow user name and password to log in with")
            answer = self._request("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
            self._token = str(answer["access_token"])
        return self._token

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None)

    def get_public(self, path: str, **params: Any) -> Any:
        """GET without logging in (health endpoints)."""
        return self._request("GET", path, auth=False, params=params or None)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        return self._request("PATCH", path, body, params=params or None)

    def health(self) -> dict[str, Any]:
        """`/api/v2/monitor/health`: metadatabase, scheduler, triggerer and dag_processor status."""
        return self._request("GET", "/api/v2/monitor/health", auth=False)

    def dags(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/dags", limit=100)["dags"])

    def pool(self, name: str) -> dict[str, Any] | None:
        try:
            return self.get(f"/api/v2/pools/{urllib.parse.quote(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def ensure_pool(self, name: str, slots: int, description: str) -> dict[str, Any]:
        """Create the pool, or set its slots when it exists with another number."""
        current = self.pool(name)
        if current is None:
            return self.post("/api/v2/pools", {"name": name, "slots": slots, "description": description})
        if current["slots"] != slots:
            return self.patch(f"/api/v2/pools/{urllib.parse.quote(name)}", {"slots": slots}, update_mask="slots")
        return current

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances",
                             limit=1000)["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}"
                         f"/xcomEntries/{key}", map_index=map_index, deserialize=True)
        return entry["value"]

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float) -> dict[str, Any]:
        """Poll until the run is finished or `timeout` seconds passed; return the run as last seen."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in FINISHED_RUN_STATES or time.monotonic() > deadline:
                return run
            time.sleep(1.0)
