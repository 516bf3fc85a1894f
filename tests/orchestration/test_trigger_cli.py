"""``bertops retrain`` against a real Airflow API server (JWT auth, /api/v2), and bad params refused by both sides."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import free_port, stop_group, wait_http
from tests.orchestration.conftest import REPO_ROOT, VENV_BIN, airflow_env

from bertops.orchestration.airflow_api import USERNAME, AirflowApiError, AirflowClient, passwords_file

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ApiServer:
    url: str
    password: str


@pytest.fixture(scope="module")
def api_server(airflow_home: Path) -> Iterator[ApiServer]:
    password = secrets.token_urlsafe(12)
    passwords_file(airflow_home).write_text(json.dumps({USERNAME: password}))
    port = free_port()
    env = airflow_env(airflow_home, {"AIRFLOW__API__WORKERS": "1"})
    env.update({"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"})
    # The DAGs must be serialized in the metadata DB for the API to trigger them (no dag-processor here).
    proc = subprocess.run([str(VENV_BIN / "airflow"), "dags", "reserialize"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = airflow_home / "api-server.log"
    with open(log, "wb") as fh:
        server = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/v2/monitor/health", timeout=240, proc=server, log=log)
        yield ApiServer(url=url, password=password)
    finally:
        stop_group(server)
    assert password not in log.read_text(errors="replace"), "the password leaked into the server log"


def _cli(server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTOPS_AIRFLOW_USERNAME": USERNAME, "BERTOPS_AIRFLOW_PASSWORD": server.password,
           "COLUMNS": "200"}  # fmt: skip
    return subprocess.run([str(VENV_BIN / "bertops"), "retrain", "--url", server.url, *args], env=env,
                          capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)  # fmt: skip


def _runs(client: AirflowClient) -> list[dict]:
    return list(client.request("GET", "/dags/bert_retrain/dagRuns")["dag_runs"])


def test_retrain_on_a_paused_dag_stops_at_once_naming_the_fix(api_server: ApiServer) -> None:
    client = AirflowClient(api_server.url, USERNAME, api_server.password)
    client.set_paused("bert_retrain", True)
    before = len(_runs(client))
    proc = _cli(api_server, "--set", "finetune.epochs=2", "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "paused" in proc.stderr and "--unpause" in proc.stderr
    assert "plan:" in proc.stdout and "fine-tuning: classification" in proc.stdout
    assert len(_runs(client)) == before


def test_a_run_nothing_will_start_stops_the_wait_at_once(api_server: ApiServer) -> None:
    # This API server has no scheduler: the queued run has no slot in sight, and --wait says so at once.
    proc = _cli(api_server, "--unpause", "--set", "finetune.epochs=2", "--wait", "--timeout", "600")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unpaused bert_retrain" in proc.stdout and "triggered" in proc.stdout
    assert "stopped waiting" in proc.stderr and "scheduler" in proc.stderr, proc.stderr
    client = AirflowClient(api_server.url, USERNAME, api_server.password)
    assert client.get_dag("bert_retrain")["is_paused"] is False


def test_retrain_cli_triggers_a_run_with_the_validated_conf(api_server: ApiServer) -> None:
    proc = _cli(api_server, "--unpause", "--set", "finetune.learning_rate=3e-5", "--set", "finetune.epochs=3",
                "--set", "pretrain.max_steps=7")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = AirflowClient(api_server.url, USERNAME, api_server.password)
    # The session's Airflow DB may hold other bert_retrain runs (the dag.test() e2e test): find the one the
    # CLI printed, and check it is the only one triggered through the API.
    runs = [r for r in _runs(client) if r["dag_run_id"] in proc.stdout]
    assert len(runs) == 1, (proc.stdout, _runs(client))
    run = runs[0]
    assert f"{api_server.url}/dags/bert_retrain/runs/" in proc.stdout
    assert run["conf"]["learning_rate"] == 3e-5 and run["conf"]["epochs"] == 3
    assert run["conf"]["overrides"] == ["pretrain.max_steps=7"]
    assert api_server.password not in proc.stdout + proc.stderr


def test_bad_params_are_refused_by_the_cli_before_sending(api_server: ApiServer) -> None:
    client = AirflowClient(api_server.url, USERNAME, api_server.password)
    before = len(_runs(client))
    for args, needle in (
        (["--set", "finetune.epochs=0"], "epochs"),
        (["--set", "finetune.task=translation"], "task"),
        (["--set", "finetune.bogus_key=1"], "finetune.bogus_key"),
        (["--set", "finetune.learning_rate=fast"], "learning_rate"),
        (["--pretraining", "sometimes"], "pretraining"),
        # nothing pretrained to fine-tune from, and pretraining skipped: refused before anything starts
        (
            [
                "--pretraining",
                "skip",
                "--set",
                "finetune.init=pretrained",
                "--set",
                "pretrain.output_dir=/nowhere",
            ],
            "not a bertops bundle",
        ),
    ):
        proc = _cli(api_server, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
    assert len(_runs(client)) == before


def test_bad_params_are_refused_by_the_dag_params(api_server: ApiServer) -> None:
    client = AirflowClient(api_server.url, USERNAME, api_server.password)
    before = len(_runs(client))
    with pytest.raises(AirflowApiError) as err:
        client.trigger_dag("bert_retrain", {"epochs": 0})
    assert err.value.status_code == 400 and "epochs" in str(err.value)
    with pytest.raises(AirflowApiError) as err:
        client.trigger_dag("bert_retrain", {"promotion": "sometimes"})
    assert err.value.status_code == 400 and "promotion" in str(err.value)
    assert len(_runs(client)) == before


def test_wrong_password_is_a_clear_error(api_server: ApiServer) -> None:
    with pytest.raises(AirflowApiError, match="refused the credentials"):
        AirflowClient(api_server.url, USERNAME, "wrong").get_dag("bert_retrain")
