"""Dynamic padding and mixed precision in the real Ray Train loop (``finetune`` on the session's Ray head).

- 2 workers, ``mixed_bfloat16``, small global batches cut to buckets of 24/28/32: each step's width and batch
  fingerprint logged by rank 0 (the sum over both workers) are those of the global batch rebuilt here from
  the plan, widths vary from step to step, and both workers finish the same steps (every step all-reduces:
  a worker out of step or with another shape would hang or fail the run). Throughput is real tokens.
- 1 worker, ``mixed_float16`` (the loss-scaling path) with gradient accumulation over 2 micro-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertops.paths import DataLayout

from .conftest import expected_batches, training_config

pytestmark = [pytest.mark.slow]

STEPS = 8


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.parametrize(
    ("workers", "policy", "micro", "accum"), [(2, "mixed_bfloat16", 4, 1), (1, "mixed_float16", 4, 2)]
)
def test_bucketed_mixed_precision_finetune_stays_in_step(
    workers: int,
    policy: str,
    micro: int,
    accum: int,
    synthetic_data: DataLayout,
    on_session_ray: str,
    mlflow_server: Any,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune, make_plan

    cfg = training_config(
        repo_root, synthetic_data, tmp_path,
        [
            f"tracking.uri={mlflow_server.uri}",
            f"finetune.scaling.address={on_session_ray}",
            f"finetune.scaling.num_workers={workers}",
            "finetune.init=scratch",
            f"model.dtype_policy={policy}",
            f"finetune.batch_size={micro}",
            f"finetune.optimizer.gradient_accumulation_steps={accum}",
            "finetune.sequence_buckets=[24, 28]",
            f"finetune.max_steps={STEPS}",
            "finetune.learning_rate=1e-3",
            "finetune.log_every_steps=1",
            f"finetune.output_dir={tmp_path / 'bundle'}",
        ],
    )  # fmt: skip
    result = finetune(cfg)
    m = result.metrics
    assert m["steps"] == STEPS and m["global_batch_size"] == 8, m

    want = expected_batches(make_plan(cfg, "finetune"), STEPS)
    uri = mlflow_server.uri
    assert _history(uri, result.run_id, "seq_len") == [(s + 1, float(w)) for s, (w, _) in enumerate(want)]
    assert _history(uri, result.run_id, "batch_fingerprint") == [(s + 1, f) for s, (_, f) in enumerate(want)]
    assert len({w for w, _ in want}) > 1, want  # the run really changed shapes between steps
    losses = [v for _, v in _history(uri, result.run_id, "loss")]
    assert len(losses) == STEPS and all(np.isfinite(losses)), losses
    padding = [v for _, v in _history(uri, result.run_id, "padding_share")]
    assert padding and all(0.0 < p < 0.6 for p in padding), padding  # real tokens only; some padding is left
    assert m["tokens_per_s"] > 0 and m["model_flops_per_s"] > 0, m
    # The start-up and its parts (the rank-0 worker logs them from a background thread, all before the run ends).
    startup = {k: _history(uri, result.run_id, k)[0][1] for k in
               ("driver_to_first_step_s", "driver_setup_s", "ray_start_s", "time_to_first_step_s")}  # fmt: skip
    assert all(v > 0 for v in startup.values()), startup
    parts = startup["driver_setup_s"] + startup["ray_start_s"] + startup["time_to_first_step_s"]
    # parts of the whole (one host, one clock)
    assert parts <= startup["driver_to_first_step_s"] + 0.5, startup
    ray_parts = [
        _history(uri, result.run_id, f"ray_{k}_s")[0][1] for k in ("worker_process", "worker_init", "backend")
    ]
    assert all(v >= 0 for v in ray_parts) and abs(sum(ray_parts) - startup["ray_start_s"]) < 0.01, ray_parts
    assert MlflowClient(uri).get_run(result.run_id).data.tags["bertops.dtype_policy"] == policy

    bundle = load_bundle(result.bundle_dir)
    probs = bundle.predict_proba(["w10 w11 w40 w50 w12"])
    assert probs.shape == (1, 2) and np.isfinite(probs).all()
