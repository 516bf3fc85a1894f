"""Start-up: from the command to the first finished train step, 1 worker, on a running local Ray (issue 18).

Starts a local Ray cluster once with ``ray start --head`` (as a user with a running Ray has; not timed), then
runs ``bertops pretrain`` (or ``finetune``) ``--runs`` times as a subprocess against it (``RAY_ADDRESS``), each
``--steps`` steps of the default tiny model on ``data/`` (``bertops data repro`` first), into a throw-away
state directory and SQLite MLflow store. For each run it prints, from the clock and the run's own metrics:

- ``command -> first step``: from launching the command to the first finished train step (the issue's
  target: at most 20 s), taken as the timestamp of the run's ``first_step_s`` metric, which the rank-0 worker
  stamps right after that step;
- its parts: the CLI's own start (Python, imports, the config), ``driver_setup_s`` (plan, data checks, the
  MLflow run), ``ray_start_s`` (Ray Train's controller and worker group, until the loop function starts),
  and the loop's part (``time_to_first_step_s``: TensorFlow's import, the model, the input pipeline and the
  first step, ``first_step_s``, which traces the step function).

    .venv/bin/python benchmarks/startup.py                       # 3 runs
    .venv/bin/python benchmarks/startup.py --runs 5 --kind finetune
    .venv/bin/python benchmarks/startup.py --repo ../other-checkout --set project.data_dir=$PWD/data   # A/B

Figures need an idle machine (the load average is printed before each run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertops.net import free_port

REPO = Path(__file__).resolve().parents[1]


def settle(limit_s: float = 90.0, busy_pct: float = 10.0) -> float:
    """Wait until the machine's CPUs are quiet (under ``busy_pct`` % over one second, at most ``limit_s``): a
    fresh ``ray start`` keeps both cores busy for seconds (its idle worker pool importing Ray), and so does the
    previous run's exit. Returns the last one-second CPU use (printed with each run)."""
    import psutil

    deadline = time.monotonic() + limit_s
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < busy_pct or time.monotonic() > deadline:
            return busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--kind", choices=["pretrain", "finetune"], default="pretrain")
    ap.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose code runs (driver and workers)"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra section.key=value")
    args = ap.parse_args()
    repo = args.repo.resolve()
    bin_dir = Path(sys.executable).parent
    state = Path(tempfile.mkdtemp(prefix="bertops-startup-"))
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # A throw-away cluster on 127.0.0.1: without this the CLI would need the token ``ray start`` generates.
    env["RAY_AUTH_MODE"] = "disabled"
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="bso-", dir="/tmp"))  # short: Ray's socket paths live under it
    subprocess.run(
        [str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
         f"--temp-dir={ray_tmp}",
         "--node-ip-address=127.0.0.1", f"--num-cpus={os.cpu_count()}", "--disable-usage-stats"],
        check=True, env=env, cwd=repo, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    from mlflow import MlflowClient

    uri = f"sqlite:///{state / 'mlflow.db'}"
    rows = []
    try:
        for i in range(args.runs):
            run_name = f"startup-{i}-{time.time_ns()}"
            cmd = [
                str(bin_dir / "bertops"), args.kind, "--params", str(repo / "params.yaml"), "--run-name", run_name,
                "--set", f"project.state_dir={state}", "--set", f"tracking.uri={uri}",
                "--set", f"{args.kind}.max_steps={args.steps}", "--set", f"{args.kind}.checkpoint_every_steps={args.steps}",
                *(["--set", f"pretrain.eval_every_steps={args.steps}"] if args.kind == "pretrain"
                  else ["--set", "finetune.init=scratch"]),
                "--set", f"{args.kind}.output_dir={state / f'bundle-{i}'}",
                *(x for o in args.overrides for x in ("--set", o)),
            ]  # fmt: skip
            busy = settle()
            load = os.getloadavg()[0]
            launched = time.time()
            subprocess.run(
                cmd, check=True, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
            )  # fmt: skip
            client = MlflowClient(uri)
            run = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                filter_string=f"tags.`bertops.run_name` = '{run_name}'",
            )[0]
            m = run.data.metrics
            first = client.get_metric_history(run.info.run_id, "first_step_s")[0]
            row = {
                "load": load,
                "total": first.timestamp / 1000 - launched,
                "driver_to_first_step": m["driver_to_first_step_s"],
                "driver_setup": m.get("driver_setup_s", float("nan")),
                "ray_start": m.get("ray_start_s", float("nan")),
                "loop_to_first_step": m["time_to_first_step_s"],
                "first_step": m["first_step_s"],
            }
            row["cli"] = row["total"] - row["driver_to_first_step"]
            rows.append(row)
            ray_parts = {
                k: m[f"ray_{k}_s"] for k in ("worker_process", "worker_init", "backend") if f"ray_{k}_s" in m
            }
            print(
                f"run {i} (load {load:.2f}, CPU {busy:.0f}% before): command -> first step {row['total']:.1f} s = CLI start "
                f"{row['cli']:.1f} + driver setup {row['driver_setup']:.1f} + Ray Train start {row['ray_start']:.1f} "
                f"+ loop to first step {row['loop_to_first_step']:.1f} (of which the first step "
                f"{row['first_step']:.1f}); rest {row['total'] - row['cli'] - row['driver_setup'] - row['ray_start'] - row['loop_to_first_step']:.1f}"
                + (f"\n    Ray Train start = {' + '.join(f'{k} {v:.1f}' for k, v in ray_parts.items())}" if ray_parts else ""),
                flush=True,
            )  # fmt: skip
    finally:
        # only this cluster's processes (``ray stop`` would stop every Ray instance of the user)
        subprocess.run(["pkill", "-f", f"{ray_tmp}/"], check=False)
        time.sleep(2)
        subprocess.run(["pkill", "-9", "-f", f"{ray_tmp}/"], check=False)
    totals = [r["total"] for r in rows]
    print(
        f"command -> first step, {args.kind}, 1 worker, {len(rows)} runs: median {statistics.median(totals):.1f} s "
        f"(min {min(totals):.1f}, max {max(totals):.1f}); target at most 20 s: "
        f"{'met' if statistics.median(totals) <= 20 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
