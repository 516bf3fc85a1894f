"""Time `make demo`: a first run (cold: stack start, data pipeline, pretraining) and a second run with nothing
changed (warm: DVC outputs reused, pretraining skipped), and print both and their ratio.

    .venv/bin/python benchmarks/demo_timing.py            # from the checkout's root; stops the stack at the end
    .venv/bin/python benchmarks/demo_timing.py --fresh    # first remove .bertops/ and DVC outputs (fresh clone)

Target (issue 7): the first run under 10 minutes on a 2-core machine; the second much faster.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], root: Path) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, check=False)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}) after {took:.0f}s")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="remove .bertops/ and DVC outputs first")
    parser.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args()
    root = Path.cwd()
    bertops = str(Path(sys.executable).parent / "bertops")
    if args.fresh:
        subprocess.run([bertops, "stack", "down"], cwd=root, check=False)
        for path in (".bertops", "artifacts", "data/ingested", "data/reports", "data/split", "data/vocab",
                     "data/pretrain", "data/finetune"):  # fmt: skip
            shutil.rmtree(root / path, ignore_errors=True)
    first = run([sys.executable, "-m", "bertops.demo"], root)
    second = run([sys.executable, "-m", "bertops.demo"], root)
    if not args.keep_up:
        subprocess.run([bertops, "stack", "down"], cwd=root, check=False)
    print(f"first make demo : {first:7.0f} s  (target < 600 s)")
    print(f"second make demo: {second:7.0f} s  (stack already up, DVC outputs reused, pretraining skipped)")
    print(f"ratio first/second: {first / second:.1f}x")


if __name__ == "__main__":
    main()
