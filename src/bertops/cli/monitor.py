"""CLI command for monitoring: ``bertops monitor`` (the latest drift report) and ``bertops monitor --check``
(run the drift check now, as the ``bert_monitor`` DAG does)."""

from __future__ import annotations

import os
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
from bertops.config import BertopsConfig
from bertops.monitoring.check import MonitoringError, run_check
from bertops.monitoring.report import DriftReport, latest_report
from bertops.monitoring.store import Store, store_uri
from bertops.orchestration.airflow_api import AirflowApiError
from bertops.orchestration.retrain import DAG_ID, DRIFT_ASSET
from bertops.orchestration.stack import StackPaths, airflow_client, read_state
from bertops.orchestration.tasks import serving_url
from bertops.serving.client import ServingClientError, flush_records


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
        console.print(flush_service(cfg, Path.cwd()))
        with exit_on(MonitoringError, FileNotFoundError):
            report = run_check(cfg)
        print_report(report, triggered="[red]drift: a retrain is due[/red]")
        if report.triggered:
            console.print(start_retrain(cfg, Path.cwd(), report))
        return
    report = latest_report(Store(store_uri(cfg)))
    if report is None:
        console.print(f"no drift report in {store_uri(cfg)} yet: run `bertops monitor --check`")
        raise typer.Exit(1)
    print_report(report)


def _serving_url(cfg: BertopsConfig, root: Path) -> str:
    services = read_state(StackPaths.of(cfg, root)).get("services", {})
    return os.environ.get("BERTOPS_SERVING_URL") or services.get("serving", {}).get("url") or serving_url(cfg)


def flush_service(cfg: BertopsConfig, root: Path) -> str:
    """Have the service write the texts it still holds, so that the check counts every text served until now."""
    url = _serving_url(cfg, root)
    try:
        written = flush_records(url)
    except ServingClientError as exc:
        return (
            f"[yellow]the service at {url} did not flush its recorded texts ({exc}): texts it served in "
            f"the last monitoring.flush_interval_s ({cfg.monitoring.flush_interval_s:g} s) are not in this check"
            "[/yellow]"
        )
    return f"the service at {url} wrote the {written} texts it still held to the monitoring store"


def start_retrain(cfg: BertopsConfig, root: Path, report: DriftReport) -> str:
    """Start the retrain the check calls for: the drift Asset's event through Airflow's API (as ``bert_monitor``'s
    ``emit`` task records it, with the report in its extra). Says what happened, never what was only meant."""
    extra = {
        "model": report.model, "champion_version": report.champion_version, "drift_score": report.drift_score,
        "n_current": report.n_current, "json_path": report.json_path, "mlflow_run_id": report.mlflow_run_id,
        "source": "bertops monitor --check",
    }  # fmt: skip
    try:
        client = airflow_client(cfg, root)
        event = client.emit_asset_event(DRIFT_ASSET, extra)
        paused = client.get_dag(DAG_ID)["is_paused"]
    except AirflowApiError as exc:
        return (
            f"[yellow]no retrain started: {exc}. Start the stack (`make up`): bert_monitor checks again within "
            f"its schedule ({cfg.monitoring.schedule}) and starts it; or run `bertops retrain` now[/yellow]"
        )
    if paused:
        return (
            f"drift Asset event {event.get('id')} recorded; {DAG_ID} is paused, so its run starts when it is "
            f"unpaused (`bertops stack up` with orchestration.dags_paused: false, or the Airflow UI)"
        )
    return f"retrain started: drift Asset event {event.get('id')} recorded; {DAG_ID} runs on the scheduler's next loop"


def print_report(report: DriftReport, triggered: str = "[red]drift: retrain triggered[/red]") -> None:
    verdict = triggered if report.triggered else (
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
