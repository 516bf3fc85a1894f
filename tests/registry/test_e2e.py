"""End to end on a real MLflow server: log real bundles as pyfuncs, register, gate, promote, serve, view.

One flow, built once for the module (a trained and an untrained tiny classifier):

1. the trained bundle is logged with ``log_classifier``, registered (v1, alias challenger), gated as the first
   model (absolute threshold only) and promoted to champion;
2. the untrained bundle is registered (v2), gated against v1 (which is re-evaluated) and fails: the champion
   stays, the version records why (tag and model-card section);

then each test checks one consumer of the result: a fresh process loading ``models:/NAME@champion``,
``mlflow models serve`` answering a real request, the MLflow UI in headless Chromium, bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import free_port, stop_group, wait_http
from tests.registry.conftest import write_jsonl

from bertops.config import BertopsConfig
from bertops.registry import registry as reg
from bertops.registry.errors import EvaluationError, RegistryError
from bertops.registry.promote import promote, run_gate

pytestmark = pytest.mark.slow


@dataclass
class Flow:
    cfg: BertopsConfig
    name: str
    client: object
    gate_v1: object
    gate_v2: object
    test_file: Path


def log_bundle(bundle: Path, experiment: str) -> str:
    import mlflow

    from bertops.model.pyfunc import log_classifier

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"log-{bundle.name}"):
        return log_classifier(bundle).model_uri


@pytest.fixture(scope="module")
def flow(tracking_uri: str, good_bundle: Path, weak_bundle: Path, test_file: Path) -> Flow:
    from bertops.registry.client import connect

    cfg = BertopsConfig.model_validate(
        {
            "tracking": {"uri": tracking_uri},
            "registry": {"model_name": f"bert-sentiment-{uuid.uuid4().hex[:6]}"},
            "evaluation": {"length_buckets": [8, 16], "latency_repeats": 5},
            "promotion": {"min_absolute": 0.8, "max_latency_ms": 5000},
        }
    )
    name = cfg.registry.model_name
    client = connect(tracking_uri)
    first = reg.register_candidate(
        log_bundle(good_bundle, "registry-e2e"), tracking_uri=tracking_uri, model_name=name,
        data_version="synthetic-v1", ray_job_id="raysubmit_test", airflow_run_id="manual__test",
    )  # fmt: skip
    assert first["version"] == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    gate_v1 = run_gate(cfg, name, "1", test_file)
    promote(cfg, name, "1")
    second = reg.register_candidate(
        log_bundle(weak_bundle, "registry-e2e"), tracking_uri=tracking_uri, model_name=name
    )
    gate_v2 = run_gate(cfg, name, second["version"], test_file)
    return Flow(cfg, name, client, gate_v1, gate_v2, test_file)


def test_first_model_promoted_and_worse_candidate_kept_out(flow: Flow) -> None:
    assert flow.gate_v1.passed and flow.gate_v1.champion_version is None
    assert [c.name for c in flow.gate_v1.checks] == ["absolute", "baseline", "latency"]
    assert not flow.gate_v2.passed and flow.gate_v2.champion_version == "1"
    assert "improvement" in [c.name for c in flow.gate_v2.failures]

    model = flow.client.get_registered_model(flow.name)
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1", "challenger": "2"}
    v1, v2 = (flow.client.get_model_version(flow.name, v) for v in ("1", "2"))
    assert v1.tags[reg.TAG_GATE] == "passed" and v1.tags[reg.TAG_DATA] == "synthetic-v1"
    assert v1.tags[reg.TAG_RAY_JOB] == "raysubmit_test" and v1.tags[reg.TAG_AIRFLOW_RUN] == "manual__test"
    assert len(v1.tags[reg.TAG_GIT]) >= 7
    assert v2.tags[reg.TAG_GATE] == "failed" and "accuracy" in v2.tags[reg.TAG_GATE_REASON]
    assert v2.tags[reg.TAG_GATE_CHAMPION] == "1"
    # the model card: metrics next to the champion's, and why the gate failed
    assert "| metric | this version | champion v1 | change |" in v2.description
    assert "**Result: failed**" in v2.description and "❌ improvement" in v2.description
    assert "## Limitations" in v1.description and "No champion to compare with" in v1.description
    # the evaluation runs hold metrics and the reviewer artifacts
    run = flow.client.get_run(v2.tags[reg.TAG_EVAL_RUN])
    assert run.data.metrics["accuracy"] < 0.8 and "latency_p50_ms_batch32" in run.data.metrics
    names = {a.path for a in flow.client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/confusion_matrix.png", "evaluation/roc.csv"} <= names

    with pytest.raises(RegistryError, match="v2 failed its gate"):
        promote(flow.cfg, flow.name, "2")
    retry = run_gate(flow.cfg, flow.name, "1", flow.test_file)  # a retried gate of the champion: no-op
    assert retry.passed and promote(flow.cfg, flow.name, "1")["changed"] is False
    assert flow.client.get_model_version_by_alias(flow.name, "champion").version == "1"


def test_bad_input_leaves_the_registry_as_it_was(flow: Flow, tmp_path: Path) -> None:
    before = dict(flow.client.get_registered_model(flow.name).aliases)
    tags_before = dict(flow.client.get_model_version(flow.name, "2").tags)
    bad = write_jsonl(tmp_path / "test.jsonl", [{"text": "fine", "label": "neutral"}])
    with pytest.raises(EvaluationError, match="row 1, field 'label': 'neutral' is not in the label map"):
        run_gate(flow.cfg, flow.name, "2", bad)
    with pytest.raises(RegistryError, match="does not exist"):
        run_gate(flow.cfg, "no-such-model", "1", flow.test_file)
    assert dict(flow.client.get_registered_model(flow.name).aliases) == before
    assert dict(flow.client.get_model_version(flow.name, "2").tags) == tags_before


PYFUNC_ROUND_TRIP = """
import json, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[2])
texts = ["a really great and wonderful film", "an awful boring dull film"]
from_frame = model.predict(pd.DataFrame({"text": texts})).to_dict(orient="records")
from_list = model.predict(texts).to_dict(orient="records")  # the contract: a plain list of strings works too
print(json.dumps({"frame": from_frame, "list": from_list}))
"""


def test_pyfunc_round_trip_in_a_fresh_process(flow: Flow, repo_root: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the model brings its own code
    proc = subprocess.run(
        [sys.executable, "-c", PYFUNC_ROUND_TRIP, flow.cfg.tracking_uri(), f"models:/{flow.name}@champion"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["list"] == answer["frame"]
    rows = answer["list"]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    for r in rows:
        assert set(r) == {"label", "probability", "prob_negative", "prob_positive"}
        assert r["prob_negative"] + r["prob_positive"] == pytest.approx(1.0, abs=1e-5)
        assert r["probability"] == max(r["prob_negative"], r["prob_positive"])


def test_mlflow_models_serve_answers_with_the_champion(flow: Flow, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    venv_bin = Path(sys.executable).parent  # `mlflow models serve` execs `uvicorn` from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": flow.cfg.tracking_uri(),
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    cmd = [str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{flow.name}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=600, proc=proc, log=log)
        body = json.dumps({"dataframe_records": [{"text": "great wonderful superb"}, {"text": "awful bad"}]})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
    finally:
        stop_group(proc)
    preds = answer["predictions"]
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert preds[0]["prob_positive"] > 0.5 > preds[1]["prob_positive"]


@pytest.mark.browser
def test_mlflow_ui_shows_champion_alias_and_model_card(flow: Flow, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (make setup-system)")
    if not flow.cfg.tracking_uri().startswith("http"):
        pytest.skip("the MLflow UI needs a tracking server")
    url = f"{flow.cfg.tracking_uri()}/#/models/{flow.name}/versions/1"
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=tmp_path) as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=30000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    dom = proc.stdout
    (tmp_path / "version1.html").write_text(dom)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{flow.name} v1" in dom  # the model card's title, rendered from the description
    assert "Promotion gate" in dom and "Limitations" in dom
    assert 'title="champion"' in dom and "@&nbsp;champion" in dom  # the alias tag of the version page
    assert "bertops.gate" in dom  # the version's tags table
