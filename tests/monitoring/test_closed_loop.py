"""The closed loop on real parts: a real Ray Serve deployment of the champion (the session's Ray head and MLflow
server) records what it serves and takes feedback over HTTP; the drift check compares the window with the
champion's training split and logs to MLflow; ``bert_monitor`` runs under ``dag.test()`` and emits the
``bertops_drift`` Asset, from which a real Airflow scheduler creates a ``bert_retrain`` run (asset-triggered,
the drift report in its consumed event, so in the retrain's lineage tags).

200 in-domain reviews: no drift, nothing triggered. 200 Chinese sentences: drift detected, the Asset emitted.
(English news sentences are not told apart from review snippets by the tiny untrained champion used here:
see docs/monitoring.md.)
The tests of this module run in order and share the service and the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from tests.conftest import stop_group
from tests.monitoring.conftest import Champion, Corpora, monitoring_config
from tests.orchestration.conftest import airflow_env, merge
from tests.serving.conftest import Registry, Service, start_service

from bertops.monitoring.check import DRIFT_RUN_TAG, run_check
from bertops.monitoring.store import FEEDBACK, RECORDS, Store
from bertops.net import free_port

pytestmark = pytest.mark.slow

STATE: dict = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitoring-store") / "store"


@pytest.fixture(scope="module")
def service(request: pytest.FixtureRequest, champion: Champion, store: Path) -> Iterator[Service]:
    import os

    address = os.environ.get("BERTOPS_TEST_RAY_ADDRESS") or request.getfixturevalue("ray_cluster").address
    extra = (f"monitoring.store_uri={store}", "monitoring.flush_interval_s=0.5")
    yield from start_service(address, Registry(champion.tracking_uri, champion.name), extra)


def post_texts(url: str, texts: list[str], per_request: int = 20) -> list[str]:
    """POST the texts in requests of ``per_request``; returns each request's X-Request-ID."""
    ids = []
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(texts), per_request):
            r = client.post(f"{url}/predict", json={"texts": texts[start : start + per_request]})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-request-id"])
    return ids


def wait_rows(store: Path, kind: str, n: int, since: datetime, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        table = Store(str(store)).read(kind, since)
        rows = [] if table is None else table.to_pylist()
        if len(rows) >= n:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"{len(rows)} {kind} rows in {store} after {timeout}s, expected {n}")


def window_hours(since: datetime) -> str:
    return f"monitoring.window_hours={(datetime.now(UTC) - since).total_seconds() / 3600 + 1e-4}"


def test_in_domain_traffic_and_feedback_give_no_drift(
    service: Service, corpora: Corpora, project: Path, champion: Champion, store: Path
) -> None:
    t0 = datetime.now(UTC)
    reviews = corpora.reviews[:200]
    ids = post_texts(service.url, [r["text"] for r in reviews])
    with httpx.Client(timeout=60) as client:
        for k, request_id in enumerate(ids[:3]):  # the true labels of the first 60 texts
            for index in range(20):
                body = {"request_id": request_id, "index": index, "label": reviews[20 * k + index]["label"]}
                assert client.post(f"{service.url}/feedback", json=body).status_code == 202
        bad = client.post(f"{service.url}/feedback", json={"request_id": ids[0], "label": "neutral"})
        assert (
            bad.status_code == 400 and "'label'" in bad.json()["error"] and "neutral" in bad.json()["error"]
        )
        metrics = client.get(f"{service.url}/metrics").text
    rows = wait_rows(store, RECORDS, 200, t0)
    wait_rows(store, FEEDBACK, 60, t0)
    assert {(r["model"], r["version"]) for r in rows} == {(champion.name, champion.version)}
    assert all(r["n_pieces"] and r["text"] for r in rows)  # bertops' pyfunc: word pieces counted
    assert 'bertops_monitoring_texts_total{outcome="queued"} 200.0' in metrics

    cfg = monitoring_config(project, champion, store, window_hours(t0))
    report = run_check(cfg, root=project)
    assert report.n_current == 200 and not report.drifted and not report.triggered, report.checks
    assert report.feedback["n"] == 60 and 0 <= report.feedback["accuracy"] <= 1
    embedding = next(c for c in report.checks if c["name"] == "embedding")
    assert embedding["p_value"] >= cfg.monitoring.significance
    STATE["quiet_report"] = report


def test_out_of_domain_traffic_is_detected_and_logged(
    service: Service, corpora: Corpora, project: Path, champion: Champion, store: Path
) -> None:
    t1 = datetime.now(UTC)
    post_texts(service.url, corpora.chinese)
    wait_rows(store, RECORDS, 200, t1)
    cfg = monitoring_config(project, champion, store, window_hours(t1))
    report = run_check(cfg, root=project)
    assert report.n_current == 200 and report.drifted and report.triggered, report.checks
    drifted = {c["name"] for c in report.checks if c["drifted"]}
    assert "embedding" in drifted, report.checks
    assert Path(report.html_path).is_file() and json.loads(Path(report.json_path).read_text())["triggered"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run = client.get_run(report.mlflow_run_id)
    assert run.data.tags["bertops.model_version"] == champion.version
    assert run.data.metrics["drift_score"] == pytest.approx(report.drift_score)
    assert run.data.metrics["embedding_p_value"] < cfg.monitoring.significance
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift_report")} == {
        "drift_report/drift.html", "drift_report/drift.json"
    }  # fmt: skip
    version = client.get_model_version(champion.name, champion.version)
    assert version.tags[DRIFT_RUN_TAG] == report.mlflow_run_id
    quiet = client.get_run(STATE["quiet_report"].mlflow_run_id)
    assert quiet.data.metrics["drift_score"] < cfg.monitoring.drift_threshold
    STATE["ood_since"] = t1


def test_monitor_check_has_the_service_write_what_it_holds(
    service: Service, corpora: Corpora, project: Path, champion: Champion, store: Path, monkeypatch
) -> None:
    """``POST /admin/flush`` (what ``bertops monitor --check`` calls first): every text served is in the store when
    the call returns, so the check never reports fewer texts than were served."""
    from bertops.cli.monitor import flush_service

    t = datetime.now(UTC)
    post_texts(service.url, [r["text"] for r in corpora.reviews[200:220]])
    monkeypatch.setenv("BERTOPS_SERVING_URL", service.url)
    note = flush_service(monitoring_config(project, champion, store, window_hours(t)), project)
    assert note.startswith(f"the service at {service.url} wrote the ") and "texts it still held" in note, note
    table = Store(str(store)).read(RECORDS, t)
    assert table is not None and table.num_rows == 20


def test_monitor_check_runs_the_comparison_now(project: Path, champion: Champion, store: Path) -> None:
    from typer.testing import CliRunner

    from bertops.cli import app

    sets = [
        f"tracking.uri={champion.tracking_uri}",
        f"registry.model_name={champion.name}",
        f"project.state_dir={project / '.bertops'}",
        f"project.data_dir={project / 'data'}",
        f"monitoring.store_uri={store}",
        "monitoring.reference_samples=300",
        window_hours(STATE["ood_since"]),
    ]
    args = ["monitor", "--check", "--params", str(project / "params.yaml")] + [
        x for s in sets for x in ("--set", s)
    ]
    # No service and no Airflow here (closed ports): the command says so instead of announcing what did not happen.
    nothing = f"http://127.0.0.1:{free_port()}"
    env = {"COLUMNS": "200", "BERTOPS_AIRFLOW_URL": nothing, "BERTOPS_SERVING_URL": nothing}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"{champion.name} v{champion.version}: drift: a retrain is due" in out, out
    assert "retrain triggered" not in out and "no retrain started:" in out and "bertops retrain" in out, out
    assert f"the service at {nothing} did not flush its recorded texts" in out, out
    assert "drift.html" in out


def test_bert_monitor_dag_emits_the_drift_asset(
    airflow_home: Path, project: Path, champion: Champion, store: Path
) -> None:
    # The DAG reads the project's params.yaml: point it at the champion, the store and the out-of-domain window.
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    hours = float(window_hours(STATE["ood_since"]).split("=")[1]) + 0.05  # room for Airflow's start-up
    merge(params, {
        "tracking": {"uri": champion.tracking_uri}, "registry": {"model_name": champion.name},
        "project": {"state_dir": str(project / ".bertops")},
        "monitoring": {"store_uri": str(store), "window_hours": hours, "reference_samples": 300},
    })  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = airflow_env(airflow_home, {
        "BERTOPS_PROJECT_DIR": str(project), "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "BERTOPS_TEST_SCHEDULE_RETRAIN": "1",
    })  # fmt: skip
    # The DAGs serialised in the metadata DB, as the dag-processor stores them: the scheduler reads them there.
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.run(
        [airflow, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        result = _driver("monitor_driver.py", env, project)
        assert result["state"] == "success" and result["tasks"] == {"check": "success", "emit": "success"}, (
            result
        )
        assert result["events"] and result["events"][-1]["triggered"] is True
        report = result["events"][-1]["json_path"]
        assert report.startswith(str(store))
        assert result["retrain_assets"] == ["AssetAny", "bertops_data", "bertops_drift"]

        # A real scheduler turns the event into a bert_retrain run (none of its tasks start: no pool slot).
        log = airflow_home / "scheduler-closed-loop.log"
        with open(log, "wb") as fh:
            scheduler = subprocess.Popen([airflow, "scheduler", "--skip-serve-logs"], env=env, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            run = _driver("retrain_trigger_driver.py", env, project, "300")
        finally:
            stop_group(scheduler)
    finally:
        _restore_airflow(env)
    assert run, f"no asset-triggered bert_retrain run within 300 s; scheduler log: {log.read_text()[-4000:]}"
    assert run["run_type"] == "asset_triggered" and run["state"] in ("queued", "running"), run
    assert run["assets"] == ["bertops_drift"] and run["events"][-1]["json_path"] == report
    # ... and the retrain's lineage, from what its tasks see of that run, names the drift report
    assert run["drift"]["drift_report"] == report
    assert run["lineage"]["bertops.drift_report"] == report
    assert run["lineage"]["bertops.drift_run_id"] == run["events"][-1]["mlflow_run_id"]


def _driver(name: str, env: dict[str, str], cwd: Path, *args: str) -> dict | None:
    """Run a driver script of this folder; its ``DRIVER <json>`` line, or a failure with the output's tail."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name(name)), *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=900)  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("DRIVER ")), None)
    assert line, (proc.stdout + proc.stderr)[-6000:]
    return json.loads(line.removeprefix("DRIVER "))


def _restore_airflow(env: dict[str, str]) -> None:
    """The session's Airflow as the other tests expect it: the default pool's slots back, bert_retrain paused."""
    code = ("from airflow.models.pool import Pool\nfrom airflow.models.dag import DagModel\n"
            "from airflow.utils.session import create_session\n"
            "Pool.create_or_update_pool('default_pool', 128, 'Default pool', include_deferred=False)\n"
            "with create_session() as s:\n    m = s.get(DagModel, 'bert_retrain')\n"
            "    if m is not None:\n        m.is_paused = True\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
