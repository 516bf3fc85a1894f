"""CLI commands for the data step: ``bertops data repro | summary | report``.

``repro`` wraps ``dvc repro`` (the stages in dvc.yaml) so that the stage commands run with this environment's
Python, then prints what each stage produced. DVC is run as a subprocess: the terminal shows which stage runs
and which are unchanged, DVC's full output goes to a log file (path printed; ``-v`` streams it instead), and a
failing stage's error (naming file, row and field) is printed from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import ParamsOption, VerboseOption, console, err_console, load_or_exit

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


def run_dvc_logged(args: list[str], log_file: Path) -> int:
    """``dvc <args>`` with its output in ``log_file``; each stage shown live as it runs or is skipped."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_file, "a", encoding="utf-8") as fh,
        console.status("dvc repro: checking what changed...") as status,
        subprocess.Popen(
            [sys.executable, "-m", "dvc", *args],
            env=dvc_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc,  # fmt: skip
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            stage = _quoted(line)
            if line.startswith("Running stage") and stage:
                console.print(f"  running stage [bold]{stage}[/bold]")
                status.update(f"dvc repro: stage {stage}...")
            elif "didn't change, skipping" in line and stage:
                console.print(f"  [dim]{stage}: unchanged[/dim]")
    return proc.returncode


def _quoted(line: str) -> str | None:
    parts = line.split("'")
    return parts[1] if len(parts) >= 3 else None


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
    verbose: VerboseOption = False,
) -> None:
    """Run ``dvc repro`` (only what changed) and print counts per split, vocabulary size and instances."""
    cfg = load_or_exit(params, None)  # a bad params.yaml fails here, naming the key, before DVC starts
    args = ["repro", *(stages or [])] + (["--force"] if force else []) + (["--dry"] if dry else [])
    if verbose or dry:
        rc = run_dvc(args)
    else:
        log_file = cfg.state_dir / "logs" / f"data-repro-{time.strftime('%Y%m%d-%H%M%S')}.log"
        console.print(f"[dim]logs: {log_file} (-v shows them here)[/dim]")
        rc = run_dvc_logged(args, log_file)
        if rc != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
            err_console.print("\n".join(tail), markup=False, highlight=False)
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
    if not path.exists() and failed:
        console.print(
            f"no validation has failed here ({path} does not exist); `bertops data report` shows the last one"
        )
        return
    if not path.exists():
        err_console.print(f"[red]error:[/red] {path} does not exist; run `bertops data repro validate` first")
        raise typer.Exit(1)
    console.print(Markdown(path.read_text(encoding="utf-8")))


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.add_typer(data_app, name="data")
