"""CLI commands for the training step: ``bertops pretrain`` and ``bertops finetune``.

Both run Ray Train (a local Ray started on demand, ``RAY_ADDRESS``, or ``*.scaling.address``), log to MLflow,
write a model bundle and print the MLflow run id and the bundle directory::

    bertops pretrain --set pretrain.max_steps=500
    bertops finetune --set finetune.init=pretrained --set finetune.epochs=2 --run-name ft-2024-06-01
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import (
    ParamsOption,
    SetOption,
    VerboseOption,
    console,
    exit_on,
    load_or_exit,
)
from bertops.cli.progress import TrainingProgress, quiet_output
from bertops.training.trainer import TrainingSetupError, run_training

RunNameOption = Annotated[
    str | None,
    typer.Option("--run-name", help="Ray Train run name; the name of an interrupted run resumes it."),
]


def _run(kind: str, params: Path, set_: list[str] | None, run_name: str | None, verbose: bool) -> None:
    cfg = load_or_exit(params, set_)
    # Before TensorFlow and Ray are imported: their start-up lines go to the log file as well.
    with quiet_output(cfg, kind, verbose), exit_on(TrainingSetupError, code=2), TrainingProgress(cfg, kind):
        result = run_training(cfg, kind, run_name)  # type: ignore[arg-type]
    console.print(f"[bold]{kind}[/bold] run [cyan]{result.run_name}[/cyan] finished")
    console.print(f"MLflow run id: {result.run_id}")
    console.print(f"bundle: {result.bundle_dir}")
    shown = {
        k: v for k, v in sorted(result.metrics.items()) if k.startswith(("validation_", "test_", "heldout_"))
    }
    for k, v in shown.items():
        console.print(f"  {k}: {v:.4f}")


def pretrain_command(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    run_name: RunNameOption = None,
    verbose: VerboseOption = False,
) -> None:
    """MLM + NSP pretraining on data/pretrain with Ray Train; writes the pretraining bundle."""
    _run("pretrain", params, set_, run_name, verbose)


def finetune_command(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    run_name: RunNameOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Fine-tune finetune.task (classification | ner) from finetune.init with Ray Train; writes the bundle."""
    _run("finetune", params, set_, run_name, verbose)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("pretrain")(pretrain_command)
    app.command("finetune")(finetune_command)
