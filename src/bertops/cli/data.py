"""CLI commands for the data step: ``bertops data repro | summary | report``.

``repro`` wraps ``dvc repro`` (the stages in dvc.yaml) so that the stage commands run with this environment's
Python, then prints what each stage produced. DVC is run as a subprocess: its own output (which stage runs,
and a failing stage's error naming file, row and field) streams to the terminal unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import ParamsOption, console, err_console, load_or_exit

data_app = typer.Typer(
    help="The DVC data pipeline: ingest, validate, split, vocab, pretrain_data, finetune_data."
)


def dvc_env() -> dict[str, str]:
    """The environment for DVC: this interpreter's bin first on PATH (stage commands call ``python``)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_dvc(args: list[str], cwd: Path | None = None) -> int:
    """Run ``dvc <args>`` with :func:`dvc_env`; returns its exit status."""
    return subprocess.call([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env())


def _show_summary(params: Path) -> None:
    from rich.table import Table

    from bertops.data.summary import pipeline_summary
    from bertops.paths import DataLayout

    cfg = load_or_exit(params, None)
    s = pipeline_summary(DataLayout(Path(cfg.project.data_dir)))

    def fmt(v: object) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    table = Table(title="bertops data", show_lines=False)
    for col in ("data set", "ingested", "train", "validation", "test", "heldout"):
        table.add_column(col, justify="left" if col == "data set" else "right")
    for task in ("classification", "ner", "corpus"):
        sp = s["splits"][task]
        table.add_row(
            task,
            fmt(s["ingested"][task]),
            fmt(sp.get("train")),
            fmt(sp.get("validation")),
            fmt(sp.get("test")),
            fmt(sp.get("heldout")),
        )
    console.print(table)
    console.print(f"data report: [bold]{fmt(s['report'])}[/bold]   vocabulary size: {fmt(s['vocab_size'])}")
    pre = s["pretrain_instances"]
    console.print(f"pretraining instances: {', '.join(f'{k} {v:,}' for k, v in pre.items()) if pre else '-'}")
    for task, counts in s["finetune_examples"].items():
        if counts:
            console.print(
                f"fine-tuning {task} examples: {', '.join(f'{k} {v:,}' for k, v in counts.items())}"
            )


@data_app.command("repro")
def repro_command(
    stages: Annotated[
        list[str] | None, typer.Argument(help="Stages to bring up to date (default: all).")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", "-f", help="Re-run even if nothing changed.")] = False,
    dry: Annotated[bool, typer.Option("--dry", help="Only show what would run.")] = False,
) -> None:
    """Run ``dvc repro`` (only what changed) and print counts per split, vocabulary size and instances."""
    load_or_exit(params, None)  # a bad params.yaml fails here, naming the key, before DVC starts
    args = ["repro", *(stages or [])] + (["--force"] if force else []) + (["--dry"] if dry else [])
    rc = run_dvc(args)
    if rc != 0:
        err_console.print(f"[red]dvc repro failed (exit {rc}); earlier outputs are unchanged.[/red]")
        raise typer.Exit(rc)
    if not dry:
        _show_summary(params)


@data_app.command("summary")
def summary_command(params: ParamsOption = Path("params.yaml")) -> None:
    """Print what the pipeline has produced so far (counts per split, vocabulary size, instances)."""
    _show_summary(params)


@data_app.command("report")
def report_command(
    params: ParamsOption = Path("params.yaml"),
    failed: Annotated[bool, typer.Option(help="Show the report of the last failed validation.")] = False,
) -> None:
    """Print the data report (data/reports/data_report.md) written by the validate stage."""
    from rich.markdown import Markdown

    from bertops.paths import DataLayout

    cfg = load_or_exit(params, None)
    path = (
        cfg.state_dir / "reports" / "data_report.failed.md"
        if failed
        else DataLayout(Path(cfg.project.data_dir)).data_report_json.with_suffix(".md")
    )
    if not path.exists():
        err_console.print(f"[red]error:[/red] {path} does not exist; run `bertops data repro validate` first")
        raise typer.Exit(1)
    console.print(Markdown(path.read_text(encoding="utf-8")))


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.add_typer(data_app, name="data")
