"""Training throughput and framework overhead: 1 Ray Train worker versus 2, same run otherwise.

For each worker count it runs a tiny-model pretraining through the real driver (Ray Train, MLflow, checkpoints)
and prints, from the run's own metrics:

- tokens/s and examples/s of the train step (first step excluded: it traces the graph),
- time from submit (the driver call) to the first finished train step,
- the share of the run's wall time spent outside train steps (start-up, evaluation, checkpoints, reporting),
  and the share that is neither a train step nor an evaluation (the framework's own overhead),

then the 2-worker / 1-worker throughput ratio and the scaling efficiency (ratio / 2). The reference is the
1-worker run measured in the same invocation.

    .venv/bin/python benchmarks/training_scaling.py --steps 300 \
        --set pretrain.batch_size=32            # on data/pretrain (dvc repro first)
    .venv/bin/python benchmarks/training_scaling.py --synthetic --steps 300   # no pipeline needed

On a shared 2-core machine two workers compete for the same two cores with everything else: expect an
efficiency well below 1 there; the figure means something on a machine with a core (or GPU) per worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))


def run_once(params: Path, overrides: list[str], workers: int, steps: int) -> dict[str, float]:
    from mlflow import MlflowClient

    from bertops.config import load_config
    from bertops.training.trainer import pretrain

    cfg = load_config(
        params,
        [
            *overrides,
            f"pretrain.scaling.num_workers={workers}",
            f"pretrain.max_steps={steps}",
            f"pretrain.checkpoint_every_steps={max(steps // 3, 1)}",
            f"pretrain.eval_every_steps={steps}",
            "pretrain.log_every_steps=10",
            f"pretrain.run_name=bench-{workers}w-{time.time_ns()}",
        ],
    )
    submitted = time.time()
    result = pretrain(cfg)
    wall = time.time() - submitted
    client = MlflowClient(cfg.tracking_uri())
    first = client.get_metric_history(result.run_id, "first_step_s")[0]
    tps = [m.value for m in client.get_metric_history(result.run_id, "tokens_per_s")]
    eps = [m.value for m in client.get_metric_history(result.run_id, "examples_per_s")]
    return {
        "workers": workers,
        "tokens_per_s": sum(tps) / len(tps),
        "examples_per_s": sum(eps) / len(eps),
        "submit_to_first_step_s": first.timestamp / 1000 - submitted,
        "wall_s": wall,
        "train_step_s": result.metrics["train_time_s"],
        "eval_s": result.metrics["eval_time_s"],
        "outside_train_step_share": 1 - result.metrics["train_time_s"] / wall,
        # what is neither a train step nor an evaluation: start-up, checkpoints, reporting, the bundle, teardown
        "framework_share": 1 - (result.metrics["train_time_s"] + result.metrics["eval_time_s"]) / wall,
        "worker_overhead_share": result.metrics["overhead_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--synthetic", action="store_true", help="use the tests' synthetic records")
    args = parser.parse_args()

    import ray

    overrides = list(args.overrides)
    state = Path(tempfile.mkdtemp(prefix="bertops-bench-"))
    overrides += [f"project.state_dir={state}", f"tracking.uri=sqlite:///{state / 'mlflow.db'}",
                  f"pretrain.output_dir={state / 'bundle'}"]  # fmt: skip
    if args.synthetic:
        from tests.training.conftest import write_synthetic_data

        data = write_synthetic_data(state / "data")
        overrides += [f"project.data_dir={data.root}", "model.max_sequence_length=64",
                      "pretrain_data.max_seq_length=32", "finetune_data.max_seq_length=32"]  # fmt: skip
    ray.init(include_dashboard=False, object_store_memory=200 * 1024**2)
    rows = [run_once(args.params, overrides, w, args.steps) for w in (1, 2)]
    ray.shutdown()
    one, two = rows
    ratio = two["tokens_per_s"] / one["tokens_per_s"]
    for r in rows:
        print(json.dumps(r))
    print(
        f"tokens/s 1 worker {one['tokens_per_s']:.0f}, 2 workers {two['tokens_per_s']:.0f}: "
        f"ratio {ratio:.2f}, scaling efficiency {ratio / 2:.2f}"
    )
    for r in rows:
        print(
            f"{r['workers']} worker(s): submit -> first step {r['submit_to_first_step_s']:.1f} s, "
            f"outside the train step {100 * r['outside_train_step_share']:.1f}% of {r['wall_s']:.0f} s wall "
            f"(evaluation {r['eval_s']:.0f} s; neither step nor evaluation {100 * r['framework_share']:.1f}%)"
        )


if __name__ == "__main__":
    main()
