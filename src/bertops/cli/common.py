"""Options and helpers shared by every CLI command."""

from __future__ import annotations

import logging
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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_or_exit(params: Path, overrides: list[str] | None) -> BertopsConfig:
    """Load the config; on a bad key print the message (which names it) and exit 2."""
    try:
        return load_config(params, overrides or [])
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def config_command(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:  # noqa: B008
    """Validate params.yaml (with overrides) and print the resolved configuration."""
    import yaml

    cfg = load_or_exit(params, set_)
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
