"""DVC stage ``evaluate``: the fine-tuned bundle + the test split -> artifacts/evaluation/ (DVC metrics and plots).

Usage: ``python pipelines/evaluate.py [--params params.yaml] [--set section.key=value ...] [--model DIR]
[--no-log] [--max-batches N]`` (dvc.yaml runs it). Writes ``metrics.json`` (``dvc metrics diff``), the plot CSVs
(``dvc plots diff``), PNGs and the worst examples, and logs an MLflow evaluation run unless ``--no-log``. An NER or
pretraining bundle is evaluated on its own held-out data into ``<evaluation.output_dir>-ner`` /
``-pretraining`` (``bertops.evaluation.evaluate.evaluate``). Bad input ends the run with exit status 1 and one
message naming the file, row and field; the previous outputs stay as they were.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bertops.config import BertopsConfig
from bertops.evaluation.errors import EvaluationError
from bertops.paths import DataLayout
from bertops.registry.errors import RegistryError, TrackingUnavailable
from bertops.stage import run_stage, stage_parser

if TYPE_CHECKING:
    from bertops.evaluation.evaluate import EvaluationResult


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--model", default=None, help="bundle or MLflow model URI (default: the fine-tuned task bundle)"
    )
    parser.add_argument("--no-log", action="store_true", help="do not log an MLflow evaluation run")
    parser.add_argument("--max-batches", type=int, default=None, help="pretraining: only the first N batches")
    args = parser.parse_args(argv)

    def run(cfg: BertopsConfig) -> EvaluationResult:
        from bertops.evaluation.evaluate import default_output_dir, evaluate, model_task

        model = args.model or cfg.finetune.bundle_dir()
        task = model_task(model)
        return evaluate(
            model,
            None,
            cfg.evaluation,
            layout=DataLayout(Path(cfg.project.data_dir)),
            output_dir=default_output_dir(cfg.evaluation.output_dir, task),
            tracking_uri=None if args.no_log else cfg.tracking_uri(),
            experiment=cfg.tracking.evaluation_experiment,
            max_batches=args.max_batches,
        )

    return run_stage(
        "evaluate",
        args,
        run,
        sections=("evaluation",),
        done=lambda r: f"{r.task}: {r.summary()} run={r.run_id} files={r.output_dir}",
        errors=(EvaluationError, RegistryError, TrackingUnavailable),
    )


if __name__ == "__main__":
    sys.exit(main())
