"""The live progress of long commands and the log file that takes the libraries' noise (real MLflow, SQLite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bertops.cli.progress import describe, progress_line, run_progress

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_progress_line_from_the_rank0_metrics_in_mlflow(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from bertops.training.tracking import MetricLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    logger = MetricLogger(uri, run_id, total_steps=100)  # what the rank-0 worker does
    logger.log({"loss": 0.9, "tokens_per_s": 7900.0, "step_time_s": 0.5}, step=5)
    logger.log({"loss": 0.5, "tokens_per_s": 8100.0, "step_time_s": 0.5}, step=10)
    logger.log({"validation_accuracy": 0.71, "validation_loss": 0.6}, step=10)
    logger.flush()  # sent from a background thread
    fields = run_progress(client, run_id)
    assert fields["step"] == 10 and fields["total"] == 100 and fields["loss"] == 0.5
    assert fields["eta_s"] == 45.0 and fields["last_eval"] == ("validation_accuracy", 0.71)
    line = progress_line("finetune", fields)
    assert "step 10/100" in line and "loss 0.5000" in line and "8,100 tok/s" in line
    assert "ETA 0m45s" in line and "validation_accuracy 0.7100" in line


def test_progress_before_the_first_step_says_so() -> None:
    assert "starting" in progress_line("pretrain", describe({}, None))


def test_noise_goes_to_the_log_file_and_the_display_to_the_terminal(tmp_path: Path) -> None:
    script = (
        "import os, logging\n"
        "from bertops.config import load_config\n"
        "from bertops.cli.common import console\n"
        "from bertops.cli.progress import quiet_output\n"
        f"cfg = load_config({str(REPO_ROOT / 'params.yaml')!r}, ['project.state_dir={tmp_path}'])\n"
        "with quiet_output(cfg, 'finetune', verbose=False) as path:\n"
        "    os.system('echo oneDNN custom operations are on >&2')\n"
        "    logging.getLogger('ray').warning('Failed to query Ray Train Controller actor state')\n"
        "    print('a library print')\n"
        "    console.print('step 3/10')\n"
        "console.print(f'done {path}')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stdout + proc.stderr
    assert "step 3/10" in terminal and "logs: " in terminal
    for noise in ("oneDNN", "Failed to query", "a library print"):
        assert noise not in terminal, terminal
    log_file = next((tmp_path / "logs").glob("finetune-*.log"))
    text = log_file.read_text()
    assert "oneDNN" in text and "Failed to query" in text and "a library print" in text


def test_metric_logger_sends_in_the_background_keeping_each_call_time(tmp_path: Path) -> None:
    """The rank-0 worker must not wait for MLflow: log() returns at once, the metric keeps the call's time."""
    import time

    from mlflow import MlflowClient

    from bertops.training.tracking import MetricLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("async")).info.run_id
    logger = MetricLogger(uri, run_id)
    before = int(time.time() * 1000)
    logger.set_tags({"bertops.dtype_policy": "float32"})
    for step in range(1, 21):
        logger.log({"loss": 1.0 / step}, step=step)
    after = int(time.time() * 1000)
    logger.close()
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 21))
    assert all(before <= m.timestamp <= after for m in history)  # when log() was called, not when sent
    assert client.get_run(run_id).data.tags["bertops.dtype_policy"] == "float32"


def test_metric_logger_never_raises_into_training_when_tracking_is_unreachable(tmp_path: Path) -> None:
    from bertops.training.tracking import MetricLogger

    logger = MetricLogger(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'mlflow.db'}", "0" * 32)
    logger.log({"loss": 0.5}, step=1)
    logger.set_tags({"a": "b"})
    logger.flush()
    logger.close(timeout=30)  # returns: the failures were logged, not raised
    assert logger._thread is None
