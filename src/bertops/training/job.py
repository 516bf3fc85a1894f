"""The body of the Ray job entry points (``ray_jobs/pretrain.py``, ``ray_jobs/finetune.py``).

Parses ``--params``, ``--set key=value`` (repeatable) and ``--run-name``, runs the training and prints one
final line ``BERTOPS_RESULT {json}`` (run_id, bundle_dir, metrics...) that the orchestrator reads from the Ray
job's logs. Exit status 2 for a run that cannot start (bad config, no data, resources), 1 for a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bertops.training.plan import Kind

CONFIG_ERROR_MARKER = "BERTOPS_CONFIG_ERROR"  # a line "BERTOPS_CONFIG_ERROR {json}": do not retry this job


def main(kind: Kind, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"ray_jobs/{kind}.py", description=f"bertops {kind} (Ray Train)")
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--run-name", default=None, help="Ray Train run name (same name resumes the run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from bertops.config import ConfigError, load_config
    from bertops.training.trainer import TrainingSetupError, run_training

    try:
        cfg = load_config(args.params, args.overrides)
        result = run_training(cfg, kind, args.run_name)
    except (ConfigError, TrainingSetupError) as exc:
        logging.getLogger(__name__).error("%s", exc)
        # A configuration error fails the same way on every try: the orchestrator reads this line and does
        # not retry (bertops.orchestration.ray_jobs.RayJobConfigError).
        sys.stdout.write(f"{CONFIG_ERROR_MARKER} {json.dumps({'error': str(exc)})}\n")
        sys.stdout.flush()
        return 2
    # The one line the orchestrator parses; flushed so that it reaches the job log even on a quick exit.
    sys.stdout.write(result.result_line() + "\n")
    sys.stdout.flush()
    return 0
