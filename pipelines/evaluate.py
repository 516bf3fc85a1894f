"""DVC stage ``evaluate``: the fine-tuned bundle + the test split -> artifacts/evaluation/ (DVC metrics and plots).

Usage: ``python pipelines/evaluate.py [--params params.yaml] [--set section.key=value ...] [--no-log]``
(dvc.yaml runs it). Writes ``metrics.json`` (``dvc metrics diff``), the plot CSVs (``dvc plots diff``), PNGs and the
worst examples, and logs an MLflow evaluation run unless ``--no-log``. Bad input ends the run with exit status 1
and one message naming the file, row and field; the previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bertops.config import ConfigError, load_config
from bertops.data.errors import DataError
from bertops.paths import DataLayout
from bertops.registry.errors import EvaluationError, RegistryError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    parser.add_argument(
        "--model", default=None, help="bundle or MLflow model URI (default finetune.output_dir)"
    )
    parser.add_argument("--no-log", action="store_true", help="do not log an MLflow evaluation run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("pipelines.evaluate")
    try:
        from bertops.evaluation.evaluate import evaluate

        cfg = load_config(args.params, args.set)
        log.info("config: %s", cfg.to_dict()["evaluation"])
        result = evaluate(
            args.model or cfg.finetune.output_dir,
            DataLayout(Path(cfg.project.data_dir)).split_file("classification", "test"),
            cfg.evaluation,
            output_dir=cfg.evaluation.output_dir,
            tracking_uri=None if args.no_log else cfg.tracking_uri(),
            experiment=cfg.tracking.evaluation_experiment,
        )
    except (ConfigError, DataError, EvaluationError, RegistryError) as exc:
        log.error("evaluate failed: %s", exc)
        return 1
    log.info(
        "evaluate done: accuracy=%.4f run=%s files=%s",
        result.metrics["accuracy"],
        result.run_id,
        result.output_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
