"""Time `bertops stack up` in this checkout, service by service, against issue 29's target (30 s after a down).

    .venv/bin/bertops stack down                  # the stack must be down (its recorded ports are kept)
    .venv/bin/python benchmarks/stack_up.py        # from the checkout's root; leaves the stack up

Prints the load average first (a figure from a busy machine is not a figure), then, from the moment ``up``
starts, when each service was started and when each answered (MLflow's ``/health``, the Ray head's dashboard,
the serving deployment's driver, Airflow's health), the total and its ratio to the target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 30.0


def main() -> None:
    root = Path.cwd()
    print(f"load average: {os.getloadavg()}")
    sys.path.insert(0, str(root / "src"))
    from bertops.config import load_config
    from bertops.orchestration import stack

    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"{time.monotonic() - t0:6.1f} s  {message}", flush=True)

    wait_until, run = stack.wait_until, subprocess.run

    def timed_wait(name: str, *args: object, **kwargs: object) -> None:
        wait_until(name, *args, **kwargs)
        say(f"{name} answers")

    def timed_run(cmd: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess:
        done = run(cmd, *args, **kwargs)
        say(f"`{' '.join(Path(c).name for c in cmd[:2])}` done (exit {done.returncode})")
        return done

    stack.wait_until, stack.subprocess.run = timed_wait, timed_run
    try:
        stack.up(load_config(root / "params.yaml"), root, on_step=say)
    finally:
        stack.wait_until, stack.subprocess.run = wait_until, run
    took = time.monotonic() - t0
    print(f"stack up: {took:.1f} s; target {TARGET_S:.0f} s; ratio {took / TARGET_S:.2f}x")


if __name__ == "__main__":
    main()
