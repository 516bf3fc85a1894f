"""``project.deterministic: true``: a 1-worker CPU fine-tune run twice in the real Ray Train loop gives
bit-identical weights and identical losses and evaluation metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertops.paths import DataLayout

from .conftest import training_config

pytestmark = [pytest.mark.slow]


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_deterministic_finetune_twice_gives_identical_weights(
    synthetic_data: DataLayout, on_session_ray: str, mlflow_server: Any, repo_root: Path, tmp_path: Path
) -> None:
    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune

    results = []
    for attempt in range(2):
        cfg = training_config(
            repo_root, synthetic_data, tmp_path / str(attempt),
            [
                f"tracking.uri={mlflow_server.uri}",
                f"finetune.scaling.address={on_session_ray}",
                "finetune.scaling.num_workers=1",
                "finetune.init=scratch",
                "project.deterministic=true",
                "finetune.batch_size=8",
                "finetune.max_steps=12",
                "finetune.learning_rate=1e-3",
                "finetune.log_every_steps=1",
                f"finetune.output_dir={tmp_path / str(attempt) / 'bundle'}",
                f"finetune.run_name=deterministic-{attempt}",
            ],
        )  # fmt: skip
        results.append(finetune(cfg))
    a, b = (load_bundle(r.bundle_dir).model.get_weights() for r in results)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    uri = mlflow_server.uri
    assert _history(uri, results[0].run_id, "loss") == _history(uri, results[1].run_id, "loss")
    for key in ("validation_accuracy", "test_accuracy", "test_loss"):
        assert results[0].metrics[key] == results[1].metrics[key], key
