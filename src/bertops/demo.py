"""``make demo``: the whole system, end to end, through real Airflow, on the embedded defaults.

    python -m bertops.demo            # what `make demo` runs, from the checkout's root
    python -m bertops.demo --task ner # `make demo TASK=ner`: the NER retrain, a served prediction's entities

1. starts the local stack (MLflow, Ray head, Ray Serve application, Airflow standalone; ``bertops stack up``);
2. waits until Airflow has parsed ``bert_retrain``, unpauses it and triggers a run with :data:`DEMO_CONF`
   (tiny model, packaged data, few steps: sized to finish in minutes on 2 cores);
3. follows the run task by task (rich progress), then prints the gate decision, the MLflow URL of the new
   model version, one prediction from the served champion and the time each stage took.

The stack stays up afterwards (Airflow UI, MLflow UI, the service): ``make down`` stops it. A second run with
nothing changed reuses the DVC outputs (``dvc repro`` is a no-op) and the running stack. The gate is
params.yaml's: at least ``promotion.min_absolute`` and ``promotion.min_over_majority`` above the
majority-class baseline, so a model that learned only the class balance is not promoted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bertops.config import load_config
from bertops.model.entities import mark_entities

log = logging.getLogger(__name__)

# The demo's run parameters: the default tiny model and packaged data, with training cut to a few minutes.
# It fine-tunes from scratch and skips pretraining: a few minutes of pretraining on 2 cores leaves the tiny
# model collapsed (150 steps: MLM accuracy 0.05, the [CLS] state nearly the same for every input), and
# fine-tuning from that state stays at the majority class (0.578), while one epoch from scratch reaches
# ~0.71 validation accuracy. Pretraining that helps takes thousands of steps: `bertops retrain` (or a
# trigger with pretraining=always) runs it; docs/benchmarks.md has the measured comparison.
DEMO_CONF: dict[str, Any] = {
    "model_size": "tiny",
    "init_checkpoint": "scratch",
    "pretraining": "skip",
    "epochs": 1,
    "max_steps": 320,  # one epoch of the packaged Rotten Tomatoes training split at batch 32
    "workers": 1,
    "promotion": "auto",
    "overrides": [
        "finetune.checkpoint_every_steps=320",
        # Both cores for the one worker (2 TensorFlow threads); the stack's Ray offers 3 CPUs, 1 held by serving.
        "finetune.scaling.cpus_per_worker=2",
        # A tiny model trained for minutes learns fastest at a high rate (1e-3: ~0.71 after one epoch).
        "finetune.learning_rate=0.001",
        "finetune.optimizer.learning_rate=0.001",
        "evaluation.latency_repeats=5",
    ],
}
# The NER demo: the same tiny model from scratch on the packaged WNUT-16 tweets (~1,900 training sentences,
# 60 steps an epoch at batch 32). Entities are rare (most words are O): balanced class weights make the
# model answer entities early, so that a few minutes of training already beat the all-O baseline the gate
# asks for (promotion.min_over_majority above its entity F1 of 0).
DEMO_NER_CONF: dict[str, Any] = {
    **DEMO_CONF,
    "task": "ner",
    "epochs": 8,
    "max_steps": 480,
    "overrides": [
        "finetune.checkpoint_every_steps=480",
        "finetune.scaling.cpus_per_worker=2",
        "finetune.learning_rate=0.001",
        "finetune.optimizer.learning_rate=0.001",
        "finetune.class_weights=balanced",
        "finetune.early_stopping_patience=8",
        "evaluation.latency_repeats=5",
    ],
}
DEMO_TEXT = "A warm, funny and beautifully acted film: the best thing I have seen this year."
DEMO_NER_TEXT = "Justin Bieber and Selena Gomez were seen in New York with the Lakers on Friday"
TASK_ORDER = ("check_params", "prepare_data", "pretrain", "finetune", "evaluate", "register", "promotion_gate",
              "update_serving", "summary")  # fmt: skip


def _duration(ti: dict[str, Any]) -> float | None:
    if ti.get("duration") is not None:
        return float(ti["duration"])
    return None


def run_demo(root: Path, console: Console, timeout_s: float = 3600, task: str = "classification") -> int:
    """Run the demo of ``task`` (classification or ner) from checkout ``root``; return the exit status."""
    from bertops.orchestration.airflow_api import AirflowApiError
    from bertops.orchestration.retrain import DAG_ID
    from bertops.orchestration.retrain_params import validate_conf
    from bertops.orchestration.stack import airflow_client, up
    from bertops.serving.client import ServingClientError, predict, wait_ready

    cfg = load_config(root / "params.yaml")
    conf = DEMO_NER_CONF if task == "ner" else DEMO_CONF
    validate_conf(conf)
    times: dict[str, float] = {}
    started = time.monotonic()

    # 1. the stack
    t0 = time.monotonic()
    with console.status("[bold]starting the local stack[/bold]") as status:
        state = up(cfg, root, on_step=lambda msg: status.update(f"[bold]{msg}[/bold]"))
    times["stack up (MLflow, Ray, Serve, Airflow)"] = time.monotonic() - t0
    services = state["services"]
    console.print(f"[green]stack up[/green] in {times['stack up (MLflow, Ray, Serve, Airflow)']:.0f}s")

    # 2. the DAG: parsed by the dag-processor, unpaused, triggered
    client = airflow_client(cfg, root)
    t0 = time.monotonic()
    with console.status("[bold]waiting for Airflow to parse bert_retrain[/bold]"):
        deadline = time.monotonic() + cfg.orchestration.stack_start_timeout_s
        while True:
            try:
                client.get_dag(DAG_ID)
                break
            except AirflowApiError as exc:
                if exc.status_code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(3)
        client.set_paused(DAG_ID, False)
    times["DAG parsed and unpaused"] = time.monotonic() - t0
    run = client.trigger_dag(DAG_ID, conf)
    run_id = run["dag_run_id"]
    console.print(
        f"triggered [bold]{DAG_ID}[/bold] run [cyan]{run_id}[/cyan]\n  {client.run_url(DAG_ID, run_id)}"
    )

    # 3. follow the run
    t0 = time.monotonic()
    seen: dict[str, str] = {}
    with console.status("[bold]bert_retrain: queued[/bold]") as status:
        while True:
            tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
            for task_id in TASK_ORDER:
                state_now = str((tis.get(task_id) or {}).get("state") or "none")
                if seen.get(task_id) != state_now:
                    seen[task_id] = state_now
                    if state_now in ("success", "skipped", "failed", "up_for_retry", "upstream_failed"):
                        colour = {"success": "green", "skipped": "yellow"}.get(state_now, "red")
                        took = _duration(tis[task_id])
                        console.print(f"  [{colour}]{state_now:>8}[/{colour}] {task_id}"
                                      + (f" ({took:.0f}s)" if took is not None else ""))  # fmt: skip
            running = [t for t in TASK_ORDER if seen.get(t) in ("running", "queued", "scheduled")]
            elapsed = time.monotonic() - t0
            status.update(f"[bold]bert_retrain[/bold]: {', '.join(running) or 'scheduling'} ({elapsed:.0f}s)")
            dag_run = client.get_run(DAG_ID, run_id)
            if dag_run["state"] in ("success", "failed"):
                break
            if elapsed > timeout_s:
                console.print(f"[red]the run did not finish within {timeout_s:.0f}s[/red]")
                return 1
            time.sleep(3)
    times["bert_retrain run"] = time.monotonic() - t0
    tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
    for task_id in TASK_ORDER:
        took = _duration(tis.get(task_id) or {})
        if took is not None:
            times[f"  task {task_id}"] = took
    if dag_run["state"] != "success":
        console.print(f"[red]bert_retrain run {run_id} failed[/red]: see {client.run_url(DAG_ID, run_id)} "
                      f"(task logs under {cfg.state_dir}/airflow/logs)")  # fmt: skip
        return 1
    summary = client.xcom(DAG_ID, run_id, "summary") or {}

    # 4. one prediction from the served champion
    t0 = time.monotonic()
    serving_url = services["serving"]["url"]
    answer: dict[str, Any] | None = None
    try:
        if task == "ner":
            # /readyz is the default model's (the classifier, absent on a stack that only ran this demo): wait
            # for the NER champion itself, the version just promoted when the gate passed.
            promoted = summary.get("version") if summary.get("gate") == "passed" else None
            answer = _wait_for_model(serving_url, cfg.registry.ner_model_name, promoted)
        else:
            wait_ready(serving_url, timeout=300)
            answer = predict(serving_url, [DEMO_TEXT])
    except ServingClientError as exc:
        console.print(f"[red]the service did not answer:[/red] {exc}")
    times["first prediction"] = time.monotonic() - t0
    times["total"] = time.monotonic() - started

    # 5. the report
    console.rule("[bold]bertops demo")
    metrics = summary.get("metrics") or {}
    console.print(f"model version   {summary.get('model')} v{summary.get('version')}")
    console.print(f"MLflow UI       {summary.get('model_version_url') or services['mlflow']['url']}")
    console.print(f"gate decision   {summary.get('gate')}: {summary.get('decision')}")
    if metrics:
        keys = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "all_o_entity_f1")
        keys = keys if task == "ner" else ("accuracy", "macro_f1", "roc_auc")
        shown = {k: metrics[k] for k in keys if k in metrics}
        console.print("test metrics    " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()))
    if answer and task == "ner":
        entities = answer["predictions"][0]["entities"]
        console.print(f"prediction      {DEMO_NER_TEXT!r}\n                -> {escape(mark_entities(DEMO_NER_TEXT, entities))}"
                      f"\n                from {answer['model']} v{answer['version']} at "
                      f"{serving_url}/models/{answer['model']}/predict")  # fmt: skip
    elif answer:
        p = answer["predictions"][0]
        console.print(f"prediction      {DEMO_TEXT!r}\n                -> {p['label']} ({p['probability']:.3f}) "
                      f"from {answer['model']} v{answer['version']} at {serving_url}/predict")  # fmt: skip
    console.print(f"Airflow UI      {services['airflow']['url']} (user bertops, password in "
                  f"{cfg.state_dir}/secrets.json)")  # fmt: skip
    console.print(f"Ray dashboard   {services['ray']['url']}")
    table = Table(title="time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in times.items():
        table.add_row(name, f"{seconds:.0f}")
    console.print(table)
    console.print("The stack keeps running; `make down` stops it.")
    return 0 if answer and summary.get("gate") == "passed" else 1


def _wait_for_model(url: str, name: str, version: str | None, timeout_s: float = 300) -> dict[str, Any]:
    """The NER prediction of the demo text, once the service answers with ``version`` (or any, if None)."""
    from bertops.serving.client import ServingClientError, predict

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = predict(url, [DEMO_NER_TEXT], model=name)
            if version is None or answer["version"] == str(version):
                return answer
        except ServingClientError as exc:
            if exc.status not in (503, None) or time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise ServingClientError(url, None, f"{name} v{version} was not served within {timeout_s:.0f}s")
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("classification", "ner"), default="classification")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    sys.exit(run_demo(Path.cwd(), console, task=args.task))


if __name__ == "__main__":
    main()
