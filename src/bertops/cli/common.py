"""Options and helpers shared by every CLI command."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bertops.config import BertopsConfig, ConfigError, load_config

console = Console()
err_console = Console(stderr=True)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params.yaml to read.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set finetune.epochs=3 (repeatable)."),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")]


CONFIG_DOC_HEADER = """# Configuration reference

`params.yaml` is the single source of configuration: one section per stage. Every key below is validated once by
`bertops.config.load_config`; an unknown key or a wrong type fails with a message naming the key and what is allowed.
Override any key for one run with `--set section.key=value` (the value is read as YAML), e.g.
`bertops finetune --set finetune.epochs=3 --set model.preset=mini`. A value replaces the key's value whole: a
mapping or a list is not merged into the default (`--set ingest.classification.label_mapping={}` empties the
mapping), everywhere, including a retrain's DVC experiment, whose `params.yaml` bertops writes and reads back
before any stage runs. `bertops config` prints the resolved configuration. Endpoints resolve config -> environment -> embedded default: `tracking.uri` -> `MLFLOW_TRACKING_URI`
-> the running local stack's MLflow server -> SQLite under `project.state_dir`; `*.scaling.address` -> `RAY_ADDRESS` -> a local Ray started on demand.

This page is generated: `bertops config --reference > docs/configuration.md` (a test checks it is current).
"""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextmanager
def exit_on(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """An expected failure (one of ``errors``) prints one line, ``error: <message>``, and exits with ``code``."""
    try:
        yield
    except errors as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(code) from None


def load_or_exit(params: Path, overrides: list[str] | None) -> BertopsConfig:
    """Load the config; on a bad key print the message (which names it) and exit 2."""
    with exit_on(ConfigError, code=2):
        return load_config(params, overrides or [])


def config_command(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    reference: Annotated[
        bool,
        typer.Option("--reference", help="Print every key with type and default (docs/configuration.md)."),
    ] = False,
) -> None:
    """Validate params.yaml (with overrides) and print the resolved configuration."""
    import yaml

    if reference:
        from bertops.config import describe_config

        typer.echo(CONFIG_DOC_HEADER + describe_config(), nl=False)
        return
    cfg = load_or_exit(params, set_)
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
