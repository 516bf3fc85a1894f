"""What long CLI commands show: a live progress display, with the noise of the libraries kept in a log file.

``quiet_output`` sends everything the process and its children write to file descriptors 1 and 2 (TensorFlow's
oneDNN and absl lines, Ray's start-up lines and warnings, the Ray workers' forwarded output, DVC's output) to
``<state_dir>/logs/<name>-<time>.log``, and points the CLI's consoles at the terminal; ``-v`` keeps it all on the
terminal. ``TrainingProgress`` shows the progress that the rank-0 training worker logs into its MLflow run
(:class:`bertops.training.tracking.MetricLogger`): step / total, loss, tokens per second, ETA, last evaluation.
It polls the tracking server, so it works wherever the workers run.

    with quiet_output(cfg, "finetune", verbose) as log_file, TrainingProgress(cfg, "finetune"):
        run_training(cfg, "finetune")
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertops.cli.common import console, err_console
from bertops.config import BertopsConfig

log = logging.getLogger(__name__)

EVAL_PREFIXES = ("validation_", "heldout_", "test_")
TOTAL_STEPS = "total_steps"  # logged once by MetricLogger


@contextmanager
def quiet_output(cfg: BertopsConfig, name: str, verbose: bool) -> Iterator[Path | None]:
    """Redirect fds 1/2 (and logging) to a log file unless ``verbose``; the consoles keep the terminal."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        yield None
        return
    logs = cfg.state_dir if cfg.state_dir.is_absolute() else Path.cwd() / cfg.state_dir
    path = logs / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    term_out = os.fdopen(os.dup(1), "w", buffering=1)
    term_err = os.fdopen(os.dup(2), "w", buffering=1)
    old_files = console.file, err_console.file
    console.file, err_console.file = term_out, term_err
    console.print(f"[dim]logs: {path} (-v shows them here)[/dim]")
    with open(path, "ab", buffering=0) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        root = logging.getLogger()
        handler = logging.StreamHandler(sys.stderr)  # fd 2: the log file
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            root.removeHandler(handler)
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            console.file, err_console.file = old_files
            term_out.close()
            term_err.close()


def describe(metrics: Mapping[str, float], step: int | None) -> dict[str, Any]:
    """The fields of one progress line from a run's latest metrics (pure; see :func:`progress_line`)."""
    total = int(metrics[TOTAL_STEPS]) if TOTAL_STEPS in metrics else None
    out: dict[str, Any] = {"step": step, "total": total, "loss": metrics.get("loss")}
    out["tokens_per_s"] = metrics.get("tokens_per_s")
    step_time = metrics.get("step_time_s")
    out["eta_s"] = (total - step) * step_time if total and step is not None and step_time else None
    evals = {k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIXES) and not k.endswith("_n")}
    key = next((k for k in sorted(evals) if k.endswith(("accuracy", "entity_f1", "loss"))), None)
    out["last_eval"] = (key, evals[key]) if key else None
    return out


def progress_line(kind: str, fields: Mapping[str, Any]) -> str:
    """``finetune  step 120/375  loss 0.5120  7,900 tok/s  ETA 1m20s  validation_accuracy 0.7100``."""
    parts = [f"[bold]{kind}[/bold]"]
    if fields.get("step") is None:
        return parts[0] + "  starting (Ray workers, TensorFlow)..."
    total = f"/{fields['total']}" if fields.get("total") else ""
    parts.append(f"step {fields['step']}{total}")
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4f}")
    if fields.get("tokens_per_s"):
        parts.append(f"{fields['tokens_per_s']:,.0f} tok/s")
    if fields.get("eta_s") is not None:
        minutes, seconds = divmod(int(fields["eta_s"]), 60)
        parts.append(f"ETA {minutes}m{seconds:02d}s")
    if fields.get("last_eval"):
        key, value = fields["last_eval"]
        parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def run_progress(client: Any, run_id: str) -> dict[str, Any]:
    """:func:`describe` of an MLflow run: its latest metrics, and the step of its latest ``loss``."""
    run = client.get_run(run_id)
    metrics = dict(run.data.metrics)
    history = client.get_metric_history(run_id, "loss") if "loss" in metrics else []
    step = max((m.step for m in history), default=None)
    return describe(metrics, step)


class TrainingProgress:
    """A live progress line for the training run of ``kind`` this command starts (found in MLflow by its tags
    and start time), refreshed from the rank-0 worker's metrics every ``interval_s``."""

    def __init__(self, cfg: BertopsConfig, kind: str, interval_s: float = 2.0, **tags: str) -> None:
        self.tracking_uri = cfg.tracking_uri()
        self.experiment = (
            cfg.tracking.pretrain_experiment if kind == "pretrain" else cfg.tracking.finetune_experiment
        )
        self.kind = kind
        self.tags = {"bertops.kind": kind, **tags}
        self.interval_s = interval_s
        self.since_ms = int(time.time() * 1000) - 5000
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def __enter__(self) -> TrainingProgress:
        from rich.live import Live

        self._live = Live(progress_line(self.kind, {}), console=console, refresh_per_second=2)
        self._live.__enter__()
        self._thread = threading.Thread(target=self._poll, name="bertops-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._refresh()
        self._live.__exit__(*exc)

    def _find_run(self, client: Any) -> str | None:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in self.tags.items())
        runs = client.search_runs([experiment.experiment_id], f"{where} and attributes.start_time >= "
                                  f"{self.since_ms}", order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
        return runs[0].info.run_id if runs else None

    def _refresh(self) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            client = MlflowClient(self.tracking_uri)
            self.run_id = self.run_id or self._find_run(client)
            if self.run_id:
                self._live.update(progress_line(self.kind, run_progress(client, self.run_id)))
        except (MlflowException, OSError) as exc:  # the display is best effort; training goes on
            log.debug("progress: %s", exc)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._refresh()
