"""The ``bertops`` command line. Each pipeline step registers its own commands from its own module.

Heavy libraries (TensorFlow, Ray, MLflow, Airflow) are imported inside commands, never here, so that
``bertops --help`` is instant.
"""

from __future__ import annotations

import typer

from bertops.cli import data, model, monitor, orchestrate, registry, reproduce, serve, train
from bertops.cli.common import config_command

app = typer.Typer(
    name="bertops",
    help="BERT from raw text to a served model: data (DVC) -> model -> training (Ray) -> "
    "evaluation and registry (MLflow) -> serving (Ray Serve) -> orchestration (Airflow).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """bertops: BERT from raw text to a served model."""


app.command("config")(config_command)
for module in (data, model, train, registry, serve, orchestrate, monitor, reproduce):
    module.register(app)
