"""CLI commands for orchestration: ``bertops retrain`` (trigger through Airflow's REST API) and
``bertops stack up|down|status`` (the local stack; ``make up`` / ``make down``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
from bertops.config import BertopsConfig

stack_app = typer.Typer(
    help="The local stack: Airflow, Ray, MLflow and serving on 127.0.0.1.", no_args_is_help=True
)


def retrain_command(
    set_: SetOption = None,
    params: ParamsOption = Path("params.yaml"),
    pretraining: Annotated[
        str | None, typer.Option(help="auto (when the corpus changed) | always | skip")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Airflow base URL (default: the local stack's).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and print its summary.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
    unpause: Annotated[bool, typer.Option(help="Unpause bert_retrain first if it is paused.")] = False,
) -> None:
    """Trigger a bert_retrain run, e.g. ``bertops retrain --set finetune.learning_rate=3e-5 --set finetune.epochs=3``.

    The parameters are checked against the DAG's JSON schema and every key against params.yaml before anything
    is sent; a bad one is refused with a message naming it (exit 2). The plan (data, pretraining or not and
    why, fine-tuning steps) is printed first. A paused DAG, or a run that nothing would start, stops at once
    with the fix (exit 1) instead of waiting.
    """
    from bertops.config import ConfigError
    from bertops.orchestration.airflow_api import AirflowApiError, RunStuck
    from bertops.orchestration.retrain import DAG_ID
    from bertops.orchestration.retrain_params import (
        RetrainParamsError,
        conf_from_sets,
        conf_to_overrides,
        validate_conf,
    )
    from bertops.orchestration.stack import airflow_client
    from bertops.orchestration.tasks import RetrainRefused, plan_lines, refuse_impossible

    cfg = load_or_exit(params, None)
    try:
        conf = conf_from_sets(set_ or [])
        if pretraining is not None:
            conf["pretraining"] = pretraining
        full = validate_conf(conf)
        overrides = conf_to_overrides(full)
        run_cfg = load_or_exit(params, overrides)  # every key and value, as the DAG will resolve them
        root = params.resolve().parent
        refuse_impossible(run_cfg, full["pretraining"], root)
    except (RetrainParamsError, ConfigError, RetrainRefused) as exc:
        err_console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"[bold]{DAG_ID}[/bold] plan:")
    for line in plan_lines(run_cfg, full["pretraining"], overrides, root):
        console.print(f"  - {line}")
    try:
        client = airflow_client(cfg, Path.cwd(), url=url)
        if client.get_dag(DAG_ID).get("is_paused"):
            if not unpause:
                err_console.print(
                    f"[red]not triggered:[/red] {DAG_ID} is paused in Airflow, so the run would never start. "
                    "Run again with [bold]--unpause[/bold] (or unpause it in the UI; "
                    "`orchestration.dags_paused: false` makes `bertops stack up` leave it unpaused)."
                )
                raise typer.Exit(1)
            client.set_paused(DAG_ID, False)
            console.print(f"unpaused {DAG_ID}")
        run = client.trigger_dag(DAG_ID, conf)
    except AirflowApiError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2 if exc.status_code == 400 else 1) from None
    run_id = run["dag_run_id"]
    console.print(f"triggered [bold]{DAG_ID}[/bold] run [cyan]{run_id}[/cyan]")
    console.print(f"  {client.run_url(DAG_ID, run_id)}")
    if not wait:
        return
    try:
        with RunProgress(console, _tracking_uri(cfg), cfg) as progress:
            final = client.wait_run(DAG_ID, run_id, timeout, on_poll=progress.update)
    except (RunStuck, AirflowApiError) as exc:
        err_console.print(f"[red]stopped waiting:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"run {run_id}: [bold]{final['state']}[/bold]")
    if final["state"] == "success":
        console.print_json(data=client.xcom(DAG_ID, run_id, "summary"))
        return
    _print_failures(cfg, client, run_id)
    raise typer.Exit(1)


def _print_failures(cfg: BertopsConfig, client: Any, run_id: str) -> None:
    """Each failed task of a retrain run: its try, the first error line, and the path of its full log (the
    ``summary`` task's own failure only when nothing else failed: it repeats the first one)."""
    from bertops.orchestration.failures import describe, task_log_path
    from bertops.orchestration.retrain import DAG_ID
    from bertops.orchestration.stack import StackPaths

    found = client.failures(DAG_ID, run_id)
    causes = [f for f in found if f["task_id"] != "summary"] or found
    logs = StackPaths.of(cfg, Path.cwd()).airflow_home / "logs"
    for failed in causes:
        err_console.print(describe(failed), style="red", soft_wrap=True, markup=False, highlight=False)
        err_console.print(
            f"  full log: {task_log_path(logs, DAG_ID, run_id, failed['task_id'], failed['try_number'])}",
            soft_wrap=True,
        )


_STATE_COLOURS = {"success": "green", "failed": "red", "running": "yellow", "skipped": "dim",
                  "up_for_retry": "magenta", "upstream_failed": "red"}  # fmt: skip


def _tracking_uri(cfg: BertopsConfig) -> str:
    """The MLflow the DAG's tasks log to: the running stack's server, else the config's."""
    from bertops.orchestration.stack import StackPaths, read_state

    mlflow = read_state(StackPaths.of(cfg, Path.cwd())).get("services", {}).get("mlflow", {})
    return str(mlflow.get("url") or cfg.tracking_uri())


class RunProgress:
    """A live line per task of a DAG run (rich), fed by :meth:`AirflowClient.wait_run`'s ``on_poll``; while
    ``pretrain`` or ``finetune`` runs, also its progress from the rank-0 worker's MLflow metrics."""

    def __init__(self, out: object, tracking_uri: str, cfg: BertopsConfig) -> None:
        from rich.live import Live

        self._live = Live(console=out, refresh_per_second=2, transient=False)
        self._tracking_uri = tracking_uri
        self._experiments = {"pretrain": cfg.tracking.pretrain_experiment,
                             "finetune": cfg.tracking.finetune_experiment}  # fmt: skip
        self._runs: dict[str, str] = {}

    def __enter__(self) -> RunProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)

    def update(self, run: dict, task_instances: list[dict]) -> None:
        from rich.table import Table

        table = Table(title=f"run {run['dag_run_id']}: {run['state']}", show_header=False, box=None)
        for ti in sorted(task_instances, key=lambda t: t.get("start_date") or "~"):
            state = ti.get("state") or "waiting"
            tries = f" (try {ti['try_number']})" if (ti.get("try_number") or 1) > 1 else ""
            colour = _STATE_COLOURS.get(state, "white")
            table.add_row(ti["task_id"], f"[{colour}]{state}[/{colour}]{tries}")
            if state == "running" and ti["task_id"] in self._experiments:
                line = self._training_line(ti["task_id"], run["dag_run_id"])
                if line:
                    table.add_row("", line)
        self._live.update(table)

    def _training_line(self, kind: str, dag_run_id: str) -> str | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from bertops.cli.progress import progress_line, run_progress

        try:
            client = MlflowClient(self._tracking_uri)
            if kind not in self._runs:
                experiment = client.get_experiment_by_name(self._experiments[kind])
                found = experiment and client.search_runs(
                    [experiment.experiment_id],
                    f"tags.`bertops.airflow_run_id` = '{dag_run_id}' and tags.`bertops.kind` = '{kind}'",
                    order_by=["attributes.start_time DESC"], max_results=1,
                )  # fmt: skip
                if not found:
                    return progress_line(kind, {})
                self._runs[kind] = found[0].info.run_id
            return progress_line(kind, run_progress(client, self._runs[kind]))
        except (MlflowException, OSError):  # best effort: the task states still show
            return None


@stack_app.command("up")
def stack_up(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    serving: Annotated[bool, typer.Option(help="Also deploy the serving application.")] = True,
    verbose: VerboseOption = False,
) -> None:
    """Start Airflow, Ray, MLflow and the serving application (what is not running yet)."""
    from bertops.orchestration.stack import StackError, up

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    with exit_on(StackError), console.status("starting the local stack...") as status:
        state = up(cfg, Path.cwd(), serving=serving, on_step=lambda m: status.update(m), params=params)
    _print_services(cfg)
    console.print(f"{len(state.get('services', {}))} services up; stop them with `make down`")


@stack_app.command("down")
def stack_down(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Stop everything `stack up` started (its own processes only)."""
    from bertops.orchestration.stack import down

    cfg = load_or_exit(params, set_)
    stopped = down(cfg, Path.cwd(), on_step=console.print)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("env")
def stack_env(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Shell exports for the stock clients of the running stack: ``eval "$(bertops stack env)"``.

    ``ray job submit`` / ``ray.init()`` / ``serve.get_app_handle`` (Ray addresses and the stack's Ray token),
    ``mlflow`` (MLFLOW_TRACKING_URI), ``airflow``'s URL, the serving URL. The token is a secret of this machine's
    stack: the output is for your shell, not for logs.
    """
    import shlex

    from bertops.orchestration.stack import StackPaths, client_env, read_state

    cfg = load_or_exit(params, set_)
    paths = StackPaths.of(cfg, Path.cwd())
    state = read_state(paths)
    if not state.get("services"):
        err_console.print("[red]error:[/red] the local stack is not running here; start it with `make up`")
        raise typer.Exit(1)
    for key, value in client_env(state, paths).items():
        typer.echo(f"export {key}={shlex.quote(value)}")


@stack_app.command("status")
def stack_status(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Each service's URL and health, and the last retrain: its state and, when it failed, why."""
    cfg = load_or_exit(params, set_)
    _print_services(cfg)
    _print_last_retrain(cfg)


def _print_last_retrain(cfg: BertopsConfig) -> None:
    from bertops.orchestration.airflow_api import AirflowApiError
    from bertops.orchestration.retrain import DAG_ID
    from bertops.orchestration.stack import airflow_client

    try:
        client = airflow_client(cfg, Path.cwd())
        run = client.latest_run(DAG_ID)
    except (AirflowApiError, OSError) as exc:
        console.print(f"last {DAG_ID} run: unknown (Airflow did not answer: {exc})")
        return
    if run is None:
        console.print(f"last {DAG_ID} run: none yet")
        return
    console.print(f"last {DAG_ID} run: {run['dag_run_id']} [bold]{run['state']}[/bold]", soft_wrap=True)
    console.print(f"  {client.run_url(DAG_ID, run['dag_run_id'])}", soft_wrap=True)
    if run["state"] == "failed":
        _print_failures(cfg, client, run["dag_run_id"])


def _print_services(cfg: object) -> None:
    from rich.table import Table

    from bertops.orchestration.stack import StackPaths, status

    info = status(cfg, Path.cwd())  # type: ignore[arg-type]
    table = Table(title="bertops local stack")
    for col in ("service", "url", "healthy"):
        table.add_column(col)
    for name, svc in info.items():
        mark = "[green]yes[/green]" if svc["healthy"] else "[red]no[/red]"
        table.add_row(name, svc["url"] or "-", mark)
    console.print(table)
    paths = StackPaths.of(cfg, Path.cwd())  # type: ignore[arg-type]
    console.print(f"Airflow login: user 'bertops', password in {paths.secrets_file} (airflow_password)")


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("retrain")(retrain_command)
    app.add_typer(stack_app, name="stack")
