"""CLI commands for the serve step: ``bertops serve``, ``bertops predict``, ``bertops serve-reload``."""

from __future__ import annotations

import socket
import time
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

UrlOption = Annotated[
    str | None, typer.Option("--url", help="Service base URL (default: http://serving.host:serving.port).")
]


def _port_taken(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already (a bind there fails)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _default_url(params: Path, set_: list[str] | None) -> str:
    s = load_or_exit(params, set_).serving
    return f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"


def serve_command(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default serving.port, 8000).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address (default: config, RAY_ADDRESS, local).")
    ] = None,
    detach: Annotated[
        bool, typer.Option(help="Deploy and exit, leaving the app on the Ray cluster.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Serve models:/<name>@<serving.model_alias> over HTTP with Ray Serve, for registry.model_name (POST
    /predict) and every serving.models name (POST /models/<name>/predict)."""
    from bertops.serving.app import APP_NAME, ServeConflict, start
    from bertops.serving.client import ServingClientError, wait_ready

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    bind_host, bind_port = host or cfg.serving.host, port or cfg.serving.port
    if (address or cfg.ray_address()) is None and _port_taken(bind_host, bind_port):
        # A new local Ray would start a second HTTP proxy (or HAProxy) on the same port: refuse instead.
        err_console.print(
            f"[red]refused:[/red] {bind_host}:{bind_port} is already in use (the local stack's serving app? "
            "`bertops stack status` shows it). Use it as it is, pick another --port, or stop it (`make down`)."
        )
        raise typer.Exit(1)
    with exit_on(ServeConflict):
        url = start(cfg, host=host, port=port, address=address)
    try:
        ready = wait_ready(url, timeout=60, until_alias_unset=True)
        console.print(
            f"[green]serving[/green] {ready['model']} version {ready['version']} at {url}  (docs: {url}/docs)"
        )
    except ServingClientError as exc:
        err_console.print(f"[yellow]started at {url}, but no model is ready yet:[/yellow] {exc}")
    if detach:
        return
    console.print("Ctrl-C to stop.")
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)


def predict_command(
    texts: Annotated[list[str], typer.Argument(help="Texts to send.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A served model (e.g. bert-ner); default: the default model."),
    ] = None,
    url: UrlOption = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
) -> None:
    """Send texts to a running service; print label and probabilities (classifier) or the text with its
    entities marked (NER model), for each."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from bertops.model.entities import mark_entities
    from bertops.serving.client import ServingClientError, predict

    with exit_on(ServingClientError):
        answer = predict(url or _default_url(params, set_), texts, model=model)
    if as_json:
        console.print_json(json.dumps(answer))
        return
    title = f"{answer['model']} version {answer['version']}"
    if answer["predictions"] and "entities" in answer["predictions"][0]:
        console.print(title)
        for text, p in zip(texts, answer["predictions"], strict=True):
            console.print(escape(mark_entities(text, p["entities"])), soft_wrap=True)
        return
    table = Table(title=title)
    for col in ("text", "label", "probability", "probabilities"):
        table.add_column(col)
    for text, p in zip(texts, answer["predictions"], strict=True):
        probs = ", ".join(f"{k}={v:.3f}" for k, v in p["probabilities"].items())
        table.add_row(
            text if len(text) < 60 else text[:57] + "...", p["label"], f"{p['probability']:.3f}", probs
        )
    console.print(table)


def reload_command(
    url: UrlOption = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="A served model; default: the default one.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Tell a running service (on this host) to follow its alias now, e.g. right after a promotion."""
    from bertops.serving.client import ServingClientError, notify_reload

    with exit_on(ServingClientError):
        result = notify_reload(url or _default_url(params, set_), model=model)
    console.print(result["message"])


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("serve")(serve_command)
    app.command("predict")(predict_command)
    app.command("serve-reload")(reload_command)
