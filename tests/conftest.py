"""Shared fixtures: real services started once per test session.

- ``mlflow_server``: a real ``mlflow server`` process on a free 127.0.0.1 port (SQLite + local artifacts).
- ``ray_cluster``: a real Ray head (``ray start --head --block``) with the dashboard, so both ``ray.init(address)``
  and the Jobs API (``JobSubmissionClient(dashboard_url)``) work. Stopped by killing its own process group only:
  other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bertops.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def copy_dvc_project(
    root: Path, dirs: tuple[str, ...] = ("pipelines", "src"), gitignore: bool = False
) -> None:
    """Copy the checkout's DVC project into ``root``: dvc.yaml, .dvcignore, pyproject.toml, .dvc/config and
    .dvc/.gitignore, the top-level ``.gitignore`` when asked, and the ``dirs`` trees (no ``__pycache__``)."""
    names = ("dvc.yaml", ".dvcignore", "pyproject.toml", *((".gitignore",) if gitignore else ()))
    for name in names:
        shutil.copy2(REPO_ROOT / name, root / name)
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO_ROOT / ".dvc" / name, root / ".dvc" / name)
    for name in dirs:
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))


TOPIC_WORDS = {
    "sport": "goal match team coach league score season player win cup",
    "tech": "chip software phone data cloud robot code startup network app",
    "world": "election minister border treaty summit parliament vote war aid capital",
}
# What a user's own data looks like in docs/own_data.md: one folder per label, one text file per document.
FOLDER_OVERRIDES = [
    "ingest.classification.source=data/raw/topics", "ingest.classification.format=folder",
    "ingest.classification.exclude_labels=[]", "ingest.classification.label_mapping={}",
    "ingest.classification.max_records=null", "validate.labels=null",
]  # fmt: skip


def write_topic_folders(root: Path, per_label: int = 20) -> list[str]:
    """``root/<label>/NNN.txt`` for three labels (sport, tech, world), each text drawn from its label's words."""
    import random

    rng = random.Random(7)
    for label, vocab in TOPIC_WORDS.items():
        (root / label).mkdir(parents=True)
        words = vocab.split()
        for i in range(per_label):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
            (root / label / f"{i:03d}.txt").write_text(f"{text} story {label} {i}.", encoding="utf-8")
    return sorted(TOPIC_WORDS)


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200, or fail with the service's log."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # any failure means "not up yet"
            last = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not come up within {timeout}s ({last}); log tail:\n{tail}")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a process started with ``start_new_session=True`` and everything it spawned."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def ray_env() -> dict[str, str]:
    """Environment for test Ray nodes: no usage stats, the checkout importable, patient start-up timeouts."""
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": f"{REPO_ROOT / 'src'}:{REPO_ROOT}",
        # More patience on a busy machine: agent registration (ray-project/ray#65983) and the dashboard.
        "RAY_agent_register_timeout_ms": os.environ.get("RAY_agent_register_timeout_ms", "120000"),  # noqa: SIM112
        "RAY_DASHBOARD_STARTUP_TIMEOUT_S": os.environ.get("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300"),
    }
    env.pop("RAY_ADDRESS", None)
    return env


def start_ray_node(
    args: list[str],
    log_dir: Path,
    name: str,
    ready_url: str | None = None,
    attempts: int = 3,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``ray start --block ARGS`` in its own process group, returned once the node is really up; retried.

    Up means ``ray start`` printed "Ray runtime started" (the raylet registered), the process is still alive
    a moment later and, for a head with the dashboard, ``ready_url`` answers. A raylet that misses Ray's fixed
    ~15 s wait for its dashboard agent's port file (``node_manager.cc``; only on a busy machine) dies; the
    dashboard may even have answered by then, which is why the log line is checked too. ``env`` is added to
    :func:`ray_env` (e.g. Ray Serve's ingress switches, which its processes read at start).
    """
    last = ""
    for attempt in range(attempts):
        log = log_dir / f"{name}.{attempt}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", "--block", *args], stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, env={**ray_env(), **(env or {})}, cwd=REPO_ROOT,
            )  # fmt: skip
        deadline, up = time.monotonic() + 300, False
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text(errors="replace"):
                time.sleep(2)
                up = proc.poll() is None
                break
            time.sleep(1)
        if up and ready_url:
            try:
                wait_http(ready_url, timeout=300, proc=proc, log=log)
            except RuntimeError:
                up = False
        if up:
            return proc
        last = log.read_text(errors="replace")[-3000:]
        stop_group(proc, timeout=30)
    raise RuntimeError(f"Ray node {name} did not start in {attempts} attempts; last log ({log_dir}):\n{last}")


def pytest_configure(config: pytest.Config) -> None:
    # Test clusters live on loopback for one session. Ray 2.60 turns token authentication on when a token file
    # (~/.ray/auth_token, e.g. from `make up`) exists; the test heads and their clients opt out together, so a
    # developer's local stack does not change what the tests see. The stack itself keeps token auth.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    root: Path


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """A real MLflow tracking server (SQLite backend, local artifact store) on 127.0.0.1."""
    root = Path(tempfile.mkdtemp(prefix="bertops-mlflow-"))
    port = free_port()
    log = root / "server.log"
    cmd = [
        str(VENV_BIN / "mlflow"), "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    # MLflow 3.17's server otherwise starts job-worker processes that nothing here uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        # Generous: on a loaded 2-core machine the first `import mlflow` alone has taken minutes.
        wait_http(f"{uri}/health", timeout=420, proc=proc, log=log)
        yield MlflowServer(uri=uri, root=root)
    finally:
        stop_group(proc)


@dataclass(frozen=True)
class RayCluster:
    address: str  # for ray.init(address=...)
    dashboard_url: str  # for JobSubmissionClient(...)
    temp_dir: Path


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real single-node Ray head with the dashboard (Jobs API) for the whole test session."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray_", dir="/tmp"))
    gcs_port, dash_port = free_port(), free_port()
    args = [
        "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--num-cpus", "4",
        "--object-store-memory", str(300 * 1024**2),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]  # fmt: skip
    dashboard_url = f"http://127.0.0.1:{dash_port}"
    proc = start_ray_node(args, temp_dir, "head", ready_url=f"{dashboard_url}/api/version")
    try:
        yield RayCluster(address=f"127.0.0.1:{gcs_port}", dashboard_url=dashboard_url, temp_dir=temp_dir)
    finally:
        stop_group(proc, timeout=60)
