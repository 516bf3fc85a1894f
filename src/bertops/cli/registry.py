"""CLI commands of the evaluation and registry step.

bertops evaluate --model artifacts/finetune/bundle          # metrics + artifacts + MLflow evaluation run
bertops evaluate --model artifacts/pretrain --max-batches 50  # NER / pretraining bundles: dispatch on the task
bertops register --model-uri models:/m-abc --training-run-id <run>   # new version, alias challenger
bertops promote 4                                            # gate v4 against the champion, promote if it passes
bertops rollback                                             # champion back to previous-champion
bertops models                                               # versions, aliases, gate results
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import (
    ParamsOption,
    SetOption,
    VerboseOption,
    console,
    err_console,
    exit_on,
    load_or_exit,
    setup_logging,
)

NameOption = Annotated[
    str | None, typer.Option("--name", help="Registered model (default registry.model_name).")
]
TestFileOption = Annotated[
    Path | None,
    typer.Option(
        "--test-file",
        help="Test data (default by the model's task: <data_dir>/split/<classification|ner>/test.jsonl, "
        "or the pretraining records <data_dir>/pretrain/manifest.json).",
    ),
]


@contextmanager
def _errors_exit():
    """Expected failures (bad input, registry refusals, unreachable server) print one line and exit 1."""
    from bertops.data.errors import DataError
    from bertops.evaluation.errors import EvaluationError
    from bertops.registry.errors import RegistryError, TrackingUnavailable

    with exit_on(RegistryError, TrackingUnavailable, EvaluationError, DataError, KeyError):
        yield


def _default_test_file(cfg: object, model_name: str | None = None) -> Path:
    """The test split of the model's task: NER for ``registry.ner_model_name``, else classification."""
    from bertops.paths import DataLayout

    task = "ner" if model_name == cfg.registry.ner_model_name else "classification"
    return DataLayout(Path(cfg.project.data_dir)).split_file(task, "test")


def evaluate_command(
    model: Annotated[str, typer.Option("--model", "-m", help="A bundle directory or an MLflow model URI.")],
    test_file: TestFileOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Default evaluation.output_dir (classification), <it>-ner, <it>-pretraining."),
    ] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Log an MLflow evaluation run.")] = True,
    split: Annotated[str, typer.Option(help="Pretraining: the records' split.")] = "heldout",
    max_batches: Annotated[
        int | None, typer.Option(min=1, help="Pretraining: evaluate only the first N batches.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="NER and pretraining batch size.")] = 32,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Evaluate a model on its held-out data, by the bundle's task: a classifier (metrics, slices, latency,
    plots), an NER model (entity-level P/R/F1 per type, token accuracy) or a pretraining model (masked-LM
    accuracy, perplexity, NSP accuracy); DVC files and an MLflow run."""
    from rich.table import Table

    from bertops.evaluation.evaluate import default_output_dir, evaluate, model_task
    from bertops.paths import DataLayout

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    with _errors_exit():
        task = model_task(model)
        result = evaluate(
            model,
            test_file,
            cfg.evaluation,
            layout=DataLayout(Path(cfg.project.data_dir)),
            output_dir=output_dir or default_output_dir(cfg.evaluation.output_dir, task),
            tracking_uri=cfg.tracking_uri() if log else None,
            experiment=cfg.tracking.evaluation_experiment,
            split=split,
            max_batches=max_batches,
            batch_size=batch_size,
        )
    table = Table("metric", "value", title=f"{result.task} evaluation of {model}")
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(
        f"files: {result.output_dir}" + (f"   MLflow run: {result.run_id}" if result.run_id else "")
    )


def register_command(
    model_uri: Annotated[
        str | None, typer.Option(help="A logged MLflow model (runs:/..., models:/m-...).")
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="A bundle directory: logged as an MLflow model first.")
    ] = None,
    training_run_id: Annotated[str | None, typer.Option(help="The MLflow run that trained it.")] = None,
    data_version: Annotated[
        str | None, typer.Option(help="DVC data version (default: the bundle's).")
    ] = None,
    ray_job_id: Annotated[str | None, typer.Option()] = None,
    airflow_run_id: Annotated[str | None, typer.Option()] = None,
    name: NameOption = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Register a candidate as a new version with lineage tags and a model card; alias ``challenger``."""
    from bertops.registry.registry import register_candidate

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    if (model_uri is None) == (bundle is None):
        err_console.print("[red]error:[/red] give exactly one of --model-uri or --bundle")
        raise typer.Exit(2)
    labels = None
    with _errors_exit():
        if bundle is not None:
            from bertops.model.bundle import read_labels, read_meta

            meta, labels = read_meta(bundle), read_labels(bundle)
            data_version = data_version or meta.get("data_version")
            training_run_id = training_run_id or meta.get("source_run_id")
            model_uri = _log_bundle(cfg, bundle, training_run_id)
        ref = register_candidate(
            model_uri,
            tracking_uri=cfg.tracking_uri(),
            model_name=name or cfg.registry.model_name,
            training_run_id=training_run_id,
            data_version=data_version,
            ray_job_id=ray_job_id,
            airflow_run_id=airflow_run_id,
            labels=labels,
        )
    console.print(json.dumps(ref), soft_wrap=True)


def _log_bundle(cfg: object, bundle: Path, training_run_id: str | None) -> str:
    """Log a bundle as its task's MLflow pyfunc (``bertops.model.pyfunc.log_bundle``) and return its model URI."""
    import mlflow

    from bertops.model.pyfunc import log_bundle
    from bertops.registry.client import connect

    connect(cfg.tracking_uri())
    if training_run_id:
        with mlflow.start_run(run_id=training_run_id):
            info = log_bundle(bundle)
    else:
        mlflow.set_experiment(cfg.tracking.finetune_experiment)
        with mlflow.start_run(run_name=f"register-{bundle.name}"):
            info = log_bundle(bundle)
    return info.model_uri


def promote_command(
    version: Annotated[str, typer.Argument(help="The version to promote.")],
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Run the gate first.")] = True,
    test_file: TestFileOption = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for a reviewer's approval (promotion.approval_timeout_s).")
    ] = False,
    name: NameOption = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Gate a version against the champion and, when it passes, make it the champion (idempotent)."""
    from bertops.registry.promote import promote, run_gate

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    model_name = name or cfg.registry.model_name
    with _errors_exit():
        if gate:
            decision = run_gate(cfg, model_name, version, test_file or _default_test_file(cfg, model_name))
            for check in decision.checks:
                mark = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]"
                console.print(f"{mark} {check.name}: {check.detail}")
            if not decision.passed:
                err_console.print(f"[red]gate failed[/red]: {model_name} v{version} stays a challenger")
                raise typer.Exit(1)
        result = promote(cfg, model_name, version, wait_for_review=wait)
    console.print(json.dumps(result), soft_wrap=True)


def rollback_command(
    to: Annotated[
        str | None, typer.Option("--to", help="Version to restore (default: previous-champion).")
    ] = None,
    name: NameOption = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Point the champion back at the previous champion (or at --to)."""
    from bertops.registry.promote import rollback

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    with _errors_exit():
        result = rollback(cfg, name or cfg.registry.model_name, to)
    console.print(json.dumps(result), soft_wrap=True)


def models_command(
    name: NameOption = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """List the versions of a registered model with their aliases, gate result and data version."""
    from rich.table import Table

    from bertops.registry.registry import list_versions

    cfg = load_or_exit(params, set_)
    model_name = name or cfg.registry.model_name
    with _errors_exit():
        rows = list_versions(cfg.tracking_uri(), model_name)
    table = Table("version", "aliases", "gate", "approval", "data version", title=model_name)
    for r in rows:
        table.add_row(r["version"], ", ".join(r["aliases"]), r["gate"], r["approval"], r["data_version"])
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("evaluate")(evaluate_command)
    app.command("register")(register_command)
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("models")(models_command)
