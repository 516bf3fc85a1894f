"""The cost of ``project.deterministic: true``: the same fine-tune with and without TensorFlow op determinism.

The default tiny model on the packaged Rotten Tomatoes records (``data/finetune/classification``), 1 worker,
``--steps`` steps, through the real driver (local Ray, MLflow in a scratch store). Arms alternate (off, on, off,
on, ...) ``--runs`` times each; it prints the loop's ``train_time_s`` per run, the medians and the ratio
on/off, and whether the two deterministic runs ended with bit-identical weights. Run it alone on an idle machine
(the 1-minute load average is printed first); the data pipeline must have run (``bertops data repro``).

    .venv/bin/python benchmarks/deterministic_cost.py --steps 200 --runs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"1-minute load average before: {os.getloadavg()[0]:.2f}", flush=True)

    import numpy as np

    from bertops.config import load_config
    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune

    work = Path(tempfile.mkdtemp(prefix="bertops-deterministic-"))
    times: dict[bool, list[float]] = {False: [], True: []}
    bundles: list[str] = []
    for i in range(args.runs):
        for deterministic in (False, True):
            name = f"{'det' if deterministic else 'free'}-{i}"
            cfg = load_config(REPO / "params.yaml", [
                f"project.data_dir={REPO / 'data'}", f"project.state_dir={work / name}",
                f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "finetune.init=scratch",
                f"finetune.max_steps={args.steps}", "finetune.scaling.num_workers=1",
                f"project.deterministic={str(deterministic).lower()}", f"finetune.output_dir={work / name / 'b'}",
                f"finetune.run_name={name}",
            ])  # fmt: skip
            result = finetune(cfg)
            seconds = float(result.metrics["train_time_s"])
            times[deterministic].append(seconds)
            if deterministic:
                bundles.append(result.bundle_dir)
            print(f"{name}: train_time_s {seconds:.2f}, test_accuracy {result.metrics['test_accuracy']:.4f}",
                  flush=True)  # fmt: skip
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"median train_time_s: off {off:.2f}, on {on:.2f}, ratio on/off {on / off:.3f}")
    if len(bundles) >= 2:
        a, b = (load_bundle(p).model.get_weights() for p in bundles[:2])
        same = all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        print(f"deterministic runs bit-identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
