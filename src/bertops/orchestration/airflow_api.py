"""A small client for Airflow 3's REST API (``/api/v2``), authenticated with a JWT from ``/auth/token``.

Credentials: ``BERTOPS_AIRFLOW_USERNAME`` / ``BERTOPS_AIRFLOW_PASSWORD`` from the environment, else the local
stack's generated ones (``<state_dir>/airflow/simple_auth_manager_passwords.json.generated``, never printed).
The simple auth manager and FAB both issue tokens from ``POST /auth/token``.

    client = AirflowClient("http://127.0.0.1:8080", *credentials_for(cfg))
    run = client.trigger_dag("bert_retrain", conf={"epochs": 3})
    client.run_url("bert_retrain", run["dag_run_id"])
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

USERNAME = "bertops"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class RunStuck(RuntimeError):
    """A queued run that nothing will start (paused DAG, no scheduler); the message names the fix."""


class AirflowApiError(RuntimeError):
    """An Airflow API call that failed; the message has the method, the path, the status and Airflow's detail."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def passwords_file(airflow_home: Path) -> Path:
    return airflow_home / PASSWORDS_FILE


def read_credentials(airflow_home: Path, username: str = USERNAME) -> tuple[str, str]:
    """``(username, password)``: the environment's ``BERTOPS_AIRFLOW_*``, else the stack's generated file."""
    env_user, env_pass = (
        os.environ.get("BERTOPS_AIRFLOW_USERNAME"),
        os.environ.get("BERTOPS_AIRFLOW_PASSWORD"),
    )
    if env_user and env_pass:
        return env_user, env_pass
    path = passwords_file(airflow_home)
    if not path.exists():
        raise AirflowApiError(
            f"no Airflow credentials: {path} does not exist. Start the local stack (`bertops stack up`) or set "
            "BERTOPS_AIRFLOW_USERNAME and BERTOPS_AIRFLOW_PASSWORD"
        )
    try:
        passwords = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AirflowApiError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if username not in passwords:
        raise AirflowApiError(f"{path} has no password for user {username!r}")
    return username, passwords[username]


def first_error(lines: list[dict[str, Any]]) -> str:
    """The first line of the exception in a task's structured log (``error_detail``), else its first error line."""
    for line in lines:
        for detail in line.get("error_detail") or []:
            value = str(detail.get("exc_value") or "").strip()
            if value:
                return f"{detail.get('exc_type', 'Error')}: {value.splitlines()[0]}"
    for line in lines:
        if str(line.get("level", "")).lower() in ("error", "critical") and line.get("event"):
            return str(line["event"]).splitlines()[0]
    return "(no error line in the task's log)"


class AirflowClient:
    """Airflow REST API v2 with a bearer token fetched on first use (and again when it expires)."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._username, self._password = username, password
        self.timeout_s = timeout_s
        self._token: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"AirflowClient({self.base_url!r}, user={self._username!r})"

    def _http(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.base_url, timeout=self.timeout_s)

    def token(self) -> str:
        """A JWT access token from ``POST /auth/token``."""
        import httpx

        try:
            with self._http() as http:
                resp = http.post("/auth/token", json={"username": self._username, "password": self._password})
        except httpx.HTTPError as exc:
            raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AirflowApiError(
                f"Airflow refused the credentials of {self._username!r} at {self.base_url}/auth/token "
                f"(HTTP {resp.status_code})",
                resp.status_code,
            )
        self._token = str(resp.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, json_body: Any = None, params: dict | None = None) -> Any:
        """Call ``/api/v2<path>``; return the decoded JSON. Retries once with a fresh token on 401."""
        import httpx

        for attempt in (1, 2):
            token = self._token or self.token()
            try:
                with self._http() as http:
                    resp = http.request(
                        method,
                        f"/api/v2{path}",
                        json=json_body,
                        params=params,
                        headers={"Authorization": f"Bearer {token}"},
                    )
            except httpx.HTTPError as exc:
                raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {exc}") from exc
            if resp.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if resp.status_code >= 400:
                try:
                    detail = resp.json().get("detail", resp.text)
                except ValueError:
                    detail = resp.text
                raise AirflowApiError(
                    f"{method} /api/v2{path} -> HTTP {resp.status_code}: {detail}", resp.status_code
                )
            return resp.json() if resp.content else None
        raise AssertionError("unreachable")

    # -- the calls bertops uses
    def health(self) -> dict[str, Any]:

        with self._http() as http:
            return dict(http.get("/api/v2/monitor/health").json())

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dags/{quote(dag_id, safe='')}"))

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/dags/{quote(dag_id, safe='')}", {"is_paused": paused}))

    def trigger_dag(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Create a manual DAG run with ``conf``; Airflow validates it against the DAG's Params (HTTP 400)."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return dict(self.request("POST", f"/dags/{quote(dag_id, safe='')}/dagRuns", body))

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return list(self.request("GET", path)["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (
            f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(task_id, safe='')}/xcomEntries/{quote(key, safe='')}"
        )
        return self.request("GET", path, params={"deserialize": "true"}).get("value")

    def emit_asset_event(self, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Record an event of the Asset ``name`` (``POST /assets/events``), as a task's outlet would: the DAGs
        scheduled on it run. Raises :class:`AirflowApiError` when Airflow does not know the Asset yet."""
        found = self.request("GET", "/assets", params={"name_pattern": name, "limit": 100})["assets"]
        match = [a for a in found if name in (a.get("name"), a.get("uri"))]
        if not match:
            raise AirflowApiError(
                f"Airflow knows no Asset {name!r} yet (its DAGs are not parsed): nothing emitted"
            )
        return dict(self.request("POST", "/assets/events", {"asset_id": match[0]["id"], "extra": extra}))

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[dict[str, Any]]:
        """The structured log lines of one try of a task (``GET .../logs/{try}``, JSON)."""
        path = (
            f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(task_id, safe='')}/logs/{try_number}"
        )
        body = self.request("GET", path, params={"full_content": "true"})
        content = body.get("content") if isinstance(body, dict) else None
        return [c for c in content or [] if isinstance(c, dict)]

    def failures(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Each failed task of a run: ``{"task_id", "try_number", "tries", "first_error"}``, where ``first_error``
        is the first line of the exception that failed its last try (what the user has to fix)."""
        out = []
        for ti in self.task_instances(dag_id, run_id):
            if ti.get("state") != "failed":
                continue
            tries = int(ti.get("try_number") or 1)
            try:
                first = first_error(self.task_log(dag_id, run_id, ti["task_id"], tries))
            except AirflowApiError as exc:
                first = f"(its log could not be read: {exc})"
            out.append({"task_id": ti["task_id"], "try_number": tries, "tries": int(ti.get("max_tries") or 0) + 1,
                        "first_error": first})  # fmt: skip
        return out

    def latest_run(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG's newest run (by when it was due to run), or None when it never ran."""
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns"
        runs = self.request("GET", path, params={"order_by": "-run_after", "limit": 1})["dag_runs"]
        return dict(runs[0]) if runs else None

    def active_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs that are running now."""
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns"
        return list(self.request("GET", path, params={"state": "running"})["dag_runs"])

    def why_stuck(self, dag_id: str, run_id: str) -> str | None:
        """Why a queued run will not start (None when something will start it: a slot frees, the scheduler
        picks it up)."""
        if self.get_dag(dag_id).get("is_paused"):
            return (f"{dag_id} is paused, so its queued run {run_id} never starts. Unpause it: "
                    f"`bertops retrain --unpause ...`, the UI's toggle, or `orchestration.dags_paused: false`")  # fmt: skip
        scheduler = (self.health().get("scheduler") or {}).get("status")
        if scheduler != "healthy":
            return f"Airflow's scheduler is {scheduler or 'not running'}: nothing starts run {run_id}. "\
                   "Check `bertops stack status` (and `make up`)"  # fmt: skip
        return None

    def wait_run(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float,
        poll_s: float = 3.0,
        on_poll: Any = None,
        queued_grace_s: float = 90.0,
    ) -> dict[str, Any]:
        """Poll until the run is ``success`` or ``failed``; ``on_poll(run, task_instances)`` each time.

        Raises :class:`RunStuck` as soon as a queued run has nothing that would start it (paused DAG, scheduler
        down), and when it stays queued ``queued_grace_s`` with no other run of the DAG holding the slot;
        :class:`AirflowApiError` on timeout.
        """
        deadline = time.monotonic() + timeout_s
        queued_alone_since: float | None = None
        while True:
            run = self.get_run(dag_id, run_id)
            if on_poll is not None:
                on_poll(run, self.task_instances(dag_id, run_id) if run["state"] != "queued" else [])
            if run["state"] in ("success", "failed"):
                return run
            if run["state"] == "queued":
                reason = self.why_stuck(dag_id, run_id)
                if reason:
                    raise RunStuck(reason)
                others = [r for r in self.active_runs(dag_id) if r["dag_run_id"] != run_id]
                if others:  # max_active_runs: waits for the slot, which the running run frees
                    queued_alone_since = None
                elif queued_alone_since is None:
                    queued_alone_since = time.monotonic()
                elif time.monotonic() - queued_alone_since > queued_grace_s:
                    raise RunStuck(f"run {run_id} of {dag_id} stayed queued {queued_grace_s:.0f}s with no other "
                                   "run holding its slot; see the scheduler log (`bertops stack status`)")  # fmt: skip
            if time.monotonic() > deadline:
                raise AirflowApiError(f"run {run_id} of {dag_id} still {run['state']} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def run_url(self, dag_id: str, run_id: str) -> str:
        """The run's page in the Airflow UI."""
        return f"{self.base_url}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
