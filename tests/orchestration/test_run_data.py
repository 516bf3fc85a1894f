"""A retrain's data, the DVC way, with the real ``dvc`` in a real git repo (no Airflow: the task bodies).

Data overrides make a DVC experiment that ``dvc exp show`` lists with its params and metrics; params.yaml,
dvc.lock and the workspace data are as they were afterwards; the next run without overrides is back on
params.yaml's data (same data version) without any stage running again; each run reads its own data copy;
``git status`` is clean throughout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from tests.conftest import FOLDER_OVERRIDES, write_topic_folders
from tests.orchestration.conftest import SMALL_DATA, git, make_project

from bertops.orchestration import dvc_ops, tasks

pytestmark = pytest.mark.slow

SMALL = SMALL_DATA
OVERRIDE = "ingest.classification.max_records=200"


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _ran_stages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Running stage" in r.getMessage()]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("run_data"), SMALL)
    tasks.prepare_run_data({}, "manual__baseline", root)
    # What a DVC user does after `dvc repro`: commit the lock (and the uncached metrics) with the params.
    git(root, "add", "dvc.lock", "data/reports/data_report.json")
    git(root, "commit", "-qm", "data: baseline")
    return root


def test_data_override_is_a_dvc_experiment_and_the_workspace_comes_back(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    params_before = (project / "params.yaml").read_bytes()
    lock_before = (project / "dvc.lock").read_bytes()
    base_version = dvc_ops.data_version(project)
    test_split = project / "data/split/classification/test.jsonl"
    base_test = test_split.read_bytes()

    run = tasks.prepare_run_data({"overrides": [OVERRIDE]}, "manual__small", project)

    assert run["data_overrides"] == [OVERRIDE]
    assert run["dvc_experiment"] == "retrain-manual__small"
    assert run["data_version"] != base_version
    # the run's own copy has the asked-for data: ~10% of 200 classification records in test
    own_test = Path(run["data_dir"]) / "split/classification/test.jsonl"
    assert 10 <= _lines(own_test) <= 30, _lines(own_test)
    assert (Path(run["data_dir"]) / "finetune/classification").is_dir()
    # ... and the workspace is as it was
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert test_split.read_bytes() == base_test
    assert git(project, "status", "--porcelain") == ""
    # dvc exp show lists the experiment with its params and the data report's metrics
    shown = json.loads(dvc_ops.run_dvc(project, "exp", "show", "--json").stdout)
    exps = [
        e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == run["dvc_experiment"]
    ]
    assert exps, shown
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["ingest"]["classification"]["max_records"] == 200
    assert data["metrics"], data

    # a second retrain with other data overrides, right after: its own data, the first run's copy unchanged
    other = tasks.prepare_run_data(
        {"overrides": ["ingest.classification.max_records=300"]}, "manual__other", project
    )
    other_test = Path(other["data_dir"]) / "split/classification/test.jsonl"
    assert other["data_version"] not in (base_version, run["data_version"])
    assert 20 <= _lines(other_test) <= 40 and 10 <= _lines(own_test) <= 30, (
        _lines(other_test),
        _lines(own_test),
    )

    caplog.clear()
    again = tasks.prepare_run_data({}, "manual__default_again", project)
    assert again["data_version"] == base_version
    assert not _ran_stages(caplog), _ran_stages(caplog)  # restored, not recomputed
    assert _lines(Path(again["data_dir"]) / "split/classification/test.jsonl") == _lines(test_split)
    # the earlier run's copy is untouched by the later one
    assert 10 <= _lines(own_test) <= 30
    assert git(project, "status", "--porcelain") == ""


def test_a_dict_override_replaces_the_mapping_in_what_the_stages_read(project: Path) -> None:
    """``label_mapping={}`` empties the mapping (``dvc exp run --set-param`` merged it: the labels stayed mapped)."""
    overrides = ["ingest.classification.label_mapping={}", "validate.labels=null"]
    run = tasks.prepare_run_data({"overrides": overrides}, "manual__raw_labels", project)
    rows = (
        (Path(run["data_dir"]) / "split/classification/train.jsonl").read_text(encoding="utf-8").splitlines()
    )
    assert {json.loads(r)["label"] for r in rows if r.strip()} == {"fresh", "rotten"}
    shown = json.loads(dvc_ops.run_dvc(project, "exp", "show", "--json").stdout)
    exp = next(
        e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == run["dvc_experiment"]
    )
    ingest = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["ingest"]
    assert ingest["classification"]["label_mapping"] == {}
    assert git(project, "status", "--porcelain") == ""


def test_a_failing_experiment_leaves_the_workspace_as_it_was(project: Path) -> None:
    params_before = (project / "params.yaml").read_bytes()
    lock_before = (project / "dvc.lock").read_bytes()
    with pytest.raises(dvc_ops.StageInputError, match="exp run") as err:
        # rotten tomatoes is 42% negative: validate refuses the data
        tasks.prepare_run_data({"overrides": ["validate.min_class_fraction=0.49"]}, "manual__bad", project)
    assert err.value.stage == "validate" and "min_class_fraction" in err.value.first_error, err.value
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert git(project, "status", "--porcelain") == ""
    assert dvc_ops.run_dvc(project, "status").stdout.strip().endswith("up to date.")


def test_a_data_error_fails_the_task_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's prepare_data task body: a stage that refuses its data fails the task without retries
    (AirflowFailException), its message first; the same data would fail the same way on every try."""
    from airflow.sdk.exceptions import AirflowFailException

    from bertops.orchestration import retrain

    monkeypatch.setenv("BERTOPS_PROJECT_DIR", str(project))
    with pytest.raises(
        AirflowFailException, match=r"^stage validate refused its input: .*min_class_fraction"
    ):
        retrain.prepare_data({"overrides": ["validate.min_class_fraction=0.49"]}, "manual__bad_once")
    assert git(project, "status", "--porcelain") == ""


def test_data_overrides_are_the_keys_dvc_stages_read() -> None:
    keys = dvc_ops.param_keys(Path(__file__).resolve().parents[2])
    assert dvc_ops.data_overrides(
        ["ingest.classification.max_records=9", "finetune.max_steps=3", "vocab.lowercase=false",
         "project.seed=1", "project.data_dir=x"], keys
    ) == ["ingest.classification.max_records=9", "vocab.lowercase=false", "project.data_dir=x"]  # fmt: skip


def test_a_task_killed_inside_an_experiment_is_put_right_by_the_retry(project: Path) -> None:
    params_before = (project / "params.yaml").read_bytes()
    # What a process killed inside `dvc exp run` leaves: the backup, and a workspace on the experiment's params.
    with pytest.raises(KeyboardInterrupt), dvc_ops.workspace_restored(project):
        backup = project / dvc_ops.BACKUP_DIR
        saved = {p.name: p.read_bytes() for p in backup.iterdir()}
        raise KeyboardInterrupt
    backup.mkdir(parents=True)
    for name, content in saved.items():
        (backup / name).write_bytes(content)
    half_run = yaml.safe_load(params_before)
    half_run["ingest"]["classification"]["max_records"] = 7  # what `dvc exp run --set-param` had written
    (project / "params.yaml").write_text(yaml.safe_dump(half_run, sort_keys=False), encoding="utf-8")
    run = tasks.prepare_run_data({"overrides": [OVERRIDE]}, "manual__retried", project)
    assert run["dvc_experiment"] == "retrain-manual__retried"
    assert (project / "params.yaml").read_bytes() == params_before
    assert not backup.exists()
    assert git(project, "status", "--porcelain") == ""


def test_a_retrain_on_a_folder_data_set_trains_on_its_labels(project: Path) -> None:
    """docs/own_data.md's retrain on a user's folder-per-label data set, asked for as overrides (no edit of
    params.yaml): the run's data has the folders' labels, and the workspace is params.yaml's data afterwards."""
    labels = write_topic_folders(project / "data" / "raw" / "topics")
    git(project, "add", "data/raw/topics")
    git(project, "commit", "-qm", "my topics")
    base_version = dvc_ops.data_version(project)
    lock_before = (project / "dvc.lock").read_bytes()

    run = tasks.prepare_run_data({"overrides": FOLDER_OVERRIDES}, "manual__folder", project)

    label_map = json.loads((Path(run["data_dir"]) / "finetune/classification/label_map.json").read_text())
    assert label_map["labels"] == labels, label_map
    split = [json.loads(x) for x in (Path(run["data_dir"]) / "split/classification/train.jsonl").open()]
    assert {r["label"] for r in split} == set(labels)
    assert run["data_version"] != base_version
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert json.loads((project / "data/finetune/classification/label_map.json").read_text()) != label_map
    assert git(project, "status", "--porcelain") == ""
