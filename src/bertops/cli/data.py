"""CLI commands for the data step."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
