"""``bertops reproduce``: a version's data rebuilt from its lineage alone, in a scratch worktree, with the real
``dvc`` in a real git repo and a real MLflow server holding the version.

A retrain with data overrides (a user's folder data set, untracked by git, with its label mapping emptied) is
reproduced exactly; after one raw file of that data set changes, the same command fails naming ``ingest``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FOLDER_OVERRIDES, write_topic_folders
from tests.orchestration.conftest import SMALL_DATA, git, make_project

from bertops.orchestration import reproduce, tasks

pytestmark = pytest.mark.slow

NAME = "reproduce-me"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("reproduce"), SMALL_DATA)
    tasks.prepare_run_data({}, "manual__baseline", root)
    git(root, "add", "dvc.lock", "data/reports/data_report.json")
    git(root, "commit", "-qm", "data: baseline")
    write_topic_folders(root / "data" / "raw" / "topics")  # the user's own data, not in git
    return root


@pytest.fixture(scope="module")
def version_tags(project: Path, mlflow_server) -> dict[str, str]:
    """A retrain's data with overrides, registered as a model version with the lineage tags a retrain writes."""
    import mlflow
    from mlflow import MlflowClient

    run = tasks.prepare_run_data({"overrides": FOLDER_OVERRIDES}, "manual__topics", project)
    tags = {
        "bertops.git_commit": git(project, "rev-parse", "HEAD").strip(),
        "bertops.data_version": run["data_version"],
        **tasks.registry_lineage(run, FOLDER_OVERRIDES),
    }
    assert json.loads(tags["bertops.overrides"]) == FOLDER_OVERRIDES and tags["bertops.data_outputs"]
    mlflow.set_tracking_uri(mlflow_server.uri)
    with mlflow.start_run() as mlrun:
        mlflow.log_text("a stand-in model", "model/README.txt")
    client = MlflowClient(mlflow_server.uri)
    client.create_registered_model(NAME)
    source = f"{mlrun.info.artifact_uri}/model"
    client.create_model_version(NAME, source, run_id=mlrun.info.run_id, tags=tags)
    client.set_registered_model_alias(NAME, "candidate", "1")
    return dict(client.get_model_version(NAME, "1").tags)


def _cli(project: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(Path(sys.executable).with_name("bertops")), "reproduce", *args, "--set", f"tracking.uri={uri}"]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=900)


def test_reproduce_rebuilds_the_recorded_data_version(
    project: Path, version_tags: dict, mlflow_server
) -> None:
    status_before = git(project, "status", "--porcelain")
    proc = _cli(project, mlflow_server.uri, f"{NAME}@candidate")
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out
    assert f"reproduced: data version {version_tags['bertops.data_version']}" in out, out
    assert "ingest.classification.label_mapping={}" in out  # the data override was applied in the worktree
    assert (
        git(project, "status", "--porcelain") == status_before == "?? data/raw/topics/\n"
    )  # workspace untouched
    assert git(project, "worktree", "list").count("\n") == 1  # the scratch worktree is gone


def test_a_changed_raw_file_is_named_by_its_stage(project: Path, version_tags: dict, mlflow_server) -> None:
    doc = sorted((project / "data" / "raw" / "topics" / "sport").iterdir())[0]
    original = doc.read_bytes()
    try:
        doc.write_text("an entirely different sport story about a late goal", encoding="utf-8")
        proc = _cli(project, mlflow_server.uri, NAME, "1")
        out = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 1, out
        assert (
            "not reproduced" in out and "first difference: ingest: data/ingested/classification.jsonl" in out
        ), out
    finally:
        doc.write_bytes(original)


def test_a_dirty_or_unknown_commit_is_refused(project: Path) -> None:
    for commit, words in (("abc-dirty", "uncommitted changes"), ("unknown", "no bertops.git_commit")):
        with pytest.raises(reproduce.ReproduceError, match=words):
            reproduce.reproduce_data(project, {"bertops.git_commit": commit}, project / ".bertops")
    with pytest.raises(reproduce.ReproduceError, match="git has no commit"):
        reproduce.reproduce_data(project, {"bertops.git_commit": "0" * 40}, project / ".bertops")


TINY = ["model.preset=custom", "model.num_layers=1", "model.hidden_dim=32", "model.num_heads=2",
        "model.intermediate_dim=64", "model.max_sequence_length=64", "finetune.init=scratch",
        "finetune.batch_size=8", "finetune.max_steps=6", "finetune.log_every_steps=2",
        "finetune.sequence_buckets=[]", "project.deterministic=true", "finetune.scaling.num_workers=1"]  # fmt: skip


def test_reproduce_train_gives_identical_metrics(project: Path, mlflow_server, ray_cluster) -> None:
    """A deterministic fine-tune of the workspace's data, registered; ``--train`` retrains it in the scratch
    worktree from the recorded configuration and gets the same held-out metrics exactly."""
    import ray
    from mlflow import MlflowClient

    from bertops.config import load_config
    from bertops.orchestration import dvc_ops
    from bertops.training.trainer import finetune

    overrides = [*TINY, f"tracking.uri={mlflow_server.uri}", f"project.data_dir={project / 'data'}",
                 f"project.state_dir={project / '.bertops'}", f"finetune.scaling.address={ray_cluster.address}",
                 f"finetune.output_dir={project / 'artifacts' / 'tiny'}"]  # fmt: skip
    if ray.is_initialized():
        ray.shutdown()
    try:
        result = finetune(load_config(project / "params.yaml", overrides))
    finally:
        ray.shutdown()
    client = MlflowClient(mlflow_server.uri)
    name = "reproduce-trained"
    client.create_registered_model(name)
    tags = {"bertops.git_commit": git(project, "rev-parse", "HEAD").strip(),
            "bertops.data_version": dvc_ops.data_version(project), "bertops.training_run_id": result.run_id}  # fmt: skip
    run = client.get_run(result.run_id)
    client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run_id=result.run_id, tags=tags)

    proc = _cli(project, mlflow_server.uri, name, "1", "--train", "--set",
                f"finetune.scaling.address={ray_cluster.address}")  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-6000:]
    assert "reproduced: data version" in out and "training reproduced:" in out, out[-6000:]
    assert "identical (project.deterministic)" in out and "test_accuracy: recorded" in out, out[-6000:]
