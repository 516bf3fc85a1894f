"""Endpoints are configuration: config, then environment, then the embedded default — and DVC's remote.

The resolution rules (``BertopsConfig.tracking_uri()`` / ``.ray_address()``) are checked directly; the DVC test
pushes and pulls through bertops' own ``dvc_ops`` to a local-directory remote and then, after changing only DVC
configuration (``dvc remote add -d`` and a git-ignored ``--local`` endpoint), to an S3-compatible remote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bertops.config import load_config

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture
def no_endpoints(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_tracking_uri_config_then_environment_then_embedded(
    no_endpoints: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = [f"project.state_dir={tmp_path}"]
    assert (
        load_config(REPO / "params.yaml", state).tracking_uri()
        == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    )
    no_endpoints.setenv("MLFLOW_TRACKING_URI", "http://mlflow.bertops.svc.cluster.local:5000")
    assert (
        load_config(REPO / "params.yaml", state).tracking_uri()
        == "http://mlflow.bertops.svc.cluster.local:5000"
    )
    pinned = load_config(REPO / "params.yaml", [*state, "tracking.uri=http://127.0.0.1:5001"])
    assert pinned.tracking_uri() == "http://127.0.0.1:5001"


def test_ray_address_config_then_environment_then_local(no_endpoints: pytest.MonkeyPatch) -> None:
    assert load_config(REPO / "params.yaml").ray_address() is None  # a local Ray started on demand
    no_endpoints.setenv("RAY_ADDRESS", "bertops-head-svc.bertops.svc.cluster.local:6379")
    cfg = load_config(REPO / "params.yaml")
    assert cfg.ray_address() == "bertops-head-svc.bertops.svc.cluster.local:6379"
    assert cfg.ray_address(cfg.pretrain.scaling) == "bertops-head-svc.bertops.svc.cluster.local:6379"
    pinned = load_config(REPO / "params.yaml", ["finetune.scaling.address=127.0.0.1:6380"])
    assert pinned.ray_address() == "127.0.0.1:6380"


def _run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_dvc_remote_switch_is_configuration_only(
    s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bertops.orchestration import dvc_ops

    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, DVC, "init", "-q")
    _run(repo, DVC, "config", "core.analytics", "false")
    data = repo / "data" / "corpus.jsonl"
    data.parent.mkdir()
    data.write_text('{"doc_id": "1", "sentences": ["a b c"]}\n')
    _run(repo, DVC, "add", "-q", "data/corpus.jsonl")

    # 1. the embedded layout: a local directory remote
    local_remote = tmp_path / "remote"
    _run(repo, DVC, "remote", "add", "-d", "local", str(local_remote))
    dvc_ops.push(repo)
    assert any(p.is_file() for p in local_remote.rglob("*")), "nothing pushed to the local remote"

    # 2. the cluster layout: an S3 remote; endpoint and credentials outside git (--local config + environment)
    s3_server.client().create_bucket(Bucket="bertops-dvc")
    _run(repo, DVC, "remote", "add", "-d", "storage", "s3://bertops-dvc/store")
    _run(repo, DVC, "remote", "modify", "--local", "storage", "endpointurl", s3_server.endpoint)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    committed = (repo / ".dvc" / "config").read_text()
    assert "s3://bertops-dvc/store" in committed and s3_server.endpoint not in committed
    dvc_ops.push(repo)
    keys = s3_server.keys("bertops-dvc")
    assert keys and all(k.startswith("store/") for k in keys), keys

    # the same pull path restores the data from S3 alone
    data.unlink()
    for cache in (repo / ".dvc" / "cache").iterdir():
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    dvc_ops.pull(repo)
    assert data.read_text() == '{"doc_id": "1", "sentences": ["a b c"]}\n'
