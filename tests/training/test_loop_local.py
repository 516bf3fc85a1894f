"""The training loop itself, in Ray Train's local mode (``ScalingConfig(num_workers=0)``: one process, no
cluster): a fine-tune on the synthetic task learns it, logs its schedule and throughput to MLflow and leaves
a loadable bundle in its final checkpoint. Fast enough to run often; the multi-process behaviour (workers,
failures, resume) is covered by ``test_ray_training.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bertops.paths import DataLayout

from .conftest import training_config

pytestmark = pytest.mark.slow


def test_finetune_loop_learns_and_writes_its_bundle(
    repo_root: Path, synthetic_data: DataLayout, tmp_path: Path
) -> None:
    from mlflow import MlflowClient
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from bertops.model.bundle import load_bundle
    from bertops.training import tracking
    from bertops.training.loop import BUNDLE_DIR, train_loop_per_worker
    from bertops.training.trainer import make_plan

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = training_config(
        repo_root, synthetic_data, tmp_path,
        [f"tracking.uri={uri}", "finetune.init=scratch", "finetune.batch_size=16", "finetune.epochs=8",
         "finetune.learning_rate=2e-3", "finetune.log_every_steps=8", "finetune.early_stopping_patience=8",
         "finetune.optimizer.gradient_accumulation_steps=2"],
    )  # fmt: skip
    plan = make_plan(cfg, "finetune")
    plan.run_id = tracking.open_run(uri, "local", "loop", cfg.flat(), {})
    result = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=plan.to_dict(),
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name="local", storage_path=str(tmp_path / "ray")),
    ).fit()

    m = result.metrics
    assert m["steps"] == 8 * (512 // 32) and m["global_batch_size"] == 32  # 16 x 2 accumulation x 1
    # 8 epoch-end evaluations and the final test pass, timed apart from the train steps
    assert m["eval_time_s"] > 0 and m["train_time_s"] + m["eval_time_s"] < m["loop_wall_s"], m
    assert m["validation_accuracy"] > 0.8 and m["test_accuracy"] > 0.8, m  # majority baseline ~0.5
    client = MlflowClient(uri)
    losses = [x.value for x in sorted(client.get_metric_history(plan.run_id, "loss"), key=lambda x: x.step)]
    assert losses[-1] < 0.5 * losses[0]
    lrs = [
        x.value for x in sorted(client.get_metric_history(plan.run_id, "learning_rate"), key=lambda x: x.step)
    ]
    assert max(lrs) == pytest.approx(2e-3, rel=0.2) and lrs[-1] < 0.2 * max(lrs)
    assert client.get_metric_history(plan.run_id, "tokens_per_s")[-1].value > 0
    evaluated = sorted({x.step for x in client.get_metric_history(plan.run_id, "validation_accuracy")})
    assert evaluated == [16 * epoch for epoch in range(1, 9)]  # at each epoch end
    # The final validation figures are those of the weights kept: the best evaluation's (early stopping puts its
    # weights back), which, when it is the last one, is reused rather than evaluated a second time.
    at_best = [
        x.value
        for x in client.get_metric_history(plan.run_id, "validation_accuracy")
        if x.step == m["best_step"]
    ]
    assert at_best and m["validation_accuracy"] == pytest.approx(at_best[0]), (m, at_best)

    with result.checkpoint.as_directory() as d:
        bundle = load_bundle(Path(d) / BUNDLE_DIR)
        assert bundle.labels == ["negative", "positive"] and bundle.meta["source_run_id"] == plan.run_id
        probs = bundle.predict_proba(["w10 w11 w40 w50 w12", "w20 w21 w40 w50 w22"])
        assert probs[0, 1] > 0.5 > probs[1, 1]
