"""CLI command for monitoring: ``bertops monitor`` (the latest drift report) and ``bertops monitor --check``
(run the drift check now, as the ``bert_monitor`` DAG does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bertops.cli.common import (
    ParamsOption,
    SetOption,
    VerboseOption,
    console,
    exit_on,
    load_or_exit,
    setup_logging,
)
from bertops.monitoring.check import MonitoringError, run_check
from bertops.monitoring.report import DriftReport, latest_report
from bertops.monitoring.store import Store, store_uri


def monitor_command(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Run the drift check now (writes and logs a new report).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the latest drift report of the served model (a table, and the path of its HTML page)."""
    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    if check:
        with exit_on(MonitoringError, FileNotFoundError):
            report = run_check(cfg)
    else:
        report = latest_report(Store(store_uri(cfg)))
        if report is None:
            console.print(f"no drift report in {store_uri(cfg)} yet: run `bertops monitor --check`")
            raise typer.Exit(1)
    print_report(report)


def print_report(report: DriftReport) -> None:
    verdict = "[red]drift: retrain triggered[/red]" if report.triggered else (
        "[yellow]drift, too few samples[/yellow]" if report.drifted else "[green]no drift[/green]"
    )  # fmt: skip
    console.print(
        f"{report.model} v{report.champion_version}: {verdict} (score {report.drift_score:.2f}, threshold "
        f"{report.drift_threshold}; {report.n_current} served texts, at least {report.min_samples} needed; "
        f"{report.window_start} .. {report.window_end})"
    )
    table = Table("check", "statistic", "p-value", "drifted", "reference", "current")
    for c in report.checks:
        stat = "" if c["statistic"] is None else f"{c['statistic']:.4g}"
        p = c["skipped"] or ("" if c["p_value"] is None else f"{c['p_value']:.4g}")
        table.add_row(
            c["name"], stat, p, "yes" if c["drifted"] else "no", _side(c["reference"]), _side(c["current"])
        )
    console.print(table)
    if report.feedback.get("n"):
        console.print(
            f"feedback: {report.feedback['n']} labelled texts, accuracy {report.feedback['accuracy']:.3f}"
        )
    console.print(f"report: {report.html_path}")
    if report.mlflow_run_id:
        console.print(f"MLflow run: {report.mlflow_run_id}")


def _side(figures: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("monitor")(monitor_command)
