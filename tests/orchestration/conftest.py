"""Fixtures for the orchestration tests: an isolated Airflow home (SQLite metadata DB, our dags/ folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import copy_dvc_project

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def airflow_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an isolated Airflow: temp AIRFLOW_HOME, bertops' dags/, no examples."""
    from bertops.orchestration.stack import airflow_settings

    env = {**os.environ, **airflow_settings(home, REPO_ROOT, api_port=0)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated Airflow metadata DB in a temp AIRFLOW_HOME (~15-30 s once per session)."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home)
    proc = subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield home


def merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into ``base`` (nested dicts key by key)."""
    for key, value in extra.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


# A small real data set (~1 minute of `dvc repro`): what the DVC tests' projects run on.
SMALL_DATA: dict[str, Any] = {
    "ingest": {"corpus": {"max_records": 30}, "classification": {"max_records": 400}, "ner": {"max_records": 60}},
    "vocab": {"vocab_size": 300, "min_frequency": 1},
    "pretrain_data": {"dupe_factor": 1, "max_seq_length": 64, "num_workers": 1},
    "finetune_data": {"max_seq_length": 64},
}  # fmt: skip


def make_project(root: Path, params: dict[str, Any]) -> Path:
    """A small copy of the checkout in ``root``: a git repo with DVC, the pipelines, ray_jobs, dags, the
    .gitignore, and params.yaml = the checkout's with ``params`` merged in (state_dir inside ``root``)."""
    copy_dvc_project(root, ("pipelines", "src", "ray_jobs", "dags"), gitignore=True)
    for path in REPO_ROOT.glob("data/**/.gitignore"):  # what DVC wrote for the stage outputs
        (root / path.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / path.relative_to(REPO_ROOT))
    (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO_ROOT / "data" / "raw" / "README.md", root / "data" / "raw" / "README.md")
    full = merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")), params)
    full["project"]["state_dir"] = str(root / ".bertops")
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


def run_retrain_dag(
    project: Path,
    airflow_home: Path,
    ray_cluster: Any,
    mlflow_server: Any,
    conf: dict[str, Any],
    serving_url: str = "http://127.0.0.1:9",
    timeout: float = 1800,
) -> tuple[dict[str, Any], str]:
    """One ``bert_retrain`` ``dag.test()`` run of ``project`` in its own process (``retrain_driver.py``), on the
    session's Ray head and MLflow server, telling ``serving_url`` to reload (default: a port where nothing
    serves, which ``update_serving`` must cope with). Returns ``(result, output)``; a run that does not succeed
    fails the test with its task states, every error line of its log and the log's tail."""
    env = airflow_env(airflow_home, {
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "BERTOPS_PROJECT_DIR": str(project),
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "BERTOPS_RAY_DASHBOARD_URL": ray_cluster.dashboard_url,
        "RAY_ADDRESS": ray_cluster.address,
        "BERTOPS_SERVING_URL": serving_url,
    })  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("retrain_driver.py")), json.dumps(conf)],
        env=env, cwd=project, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    line = next((x for x in proc.stdout.splitlines() if x.startswith("DRIVER ")), None)
    assert line, output[-6000:]
    result = json.loads(line.removeprefix("DRIVER "))
    if result["state"] != "success":
        # pytest.fail keeps the whole message (an assert's repr would be cut in the middle).
        log = project.parent / f"dag_test-{project.name}.log"
        log.write_text(output)
        errors = [x for x in output.splitlines() if "error" in x.lower() or "Traceback" in x][-40:]
        pytest.fail(f"bert_retrain {result['state']}: {result['tasks']}\nfull log: {log}\n"
                    + "\n".join(errors) + "\n--- tail ---\n" + output[-4000:])  # fmt: skip
    return result, output
