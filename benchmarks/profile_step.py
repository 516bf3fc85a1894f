"""Where bertops' train step spends its time: TensorFlow's profiler on the same step as model_throughput.py.

    .venv/bin/python benchmarks/profile_step.py                       # L2/H128, seq 128, batch 32, no XLA
    .venv/bin/python benchmarks/profile_step.py --size L6-H384 --jit  # XLA: ops appear as compiled clusters

It builds the model and step of ``model_throughput.py`` (sequence classification, vocab 30,522, AdamW; every
token real), runs ``--warmup`` steps, then records ``--steps`` steps with ``tf.profiler.experimental`` and reads
the trace it wrote (``xplane.pb``, TensorFlow's own protobuf): the time of each TensorFlow op kind on the host
threads, summed over the recorded steps, largest first, with its share of the op time and per step. Ops of
one kind run on several threads at once, so the shares are of op time, not of wall time; wall time per step is
printed apart. Needs an idle machine like every figure.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from model_throughput import SIZES, VOCAB, classifier_and_step  # noqa: E402

# Trace events that hold the op events rather than being ops themselves (the step, the executor, the call).
_CONTAINERS = {"Process", "Run", "FunctionRun", "ParallelFor", "EagerExecute", "EagerKernelExecute",
               "TFE_Py_ExecuteCancelable", "EagerLocalExecute", "ExecutorState::Process"}  # fmt: skip


def op_times(logdir: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(op kind -> ns, op kind -> count) over the host planes of every ``xplane.pb`` under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    ns: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for path in logdir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: m.name for k, m in plane.event_metadata.items()}
            stats = {k: m.name for k, m in plane.stat_metadata.items()}
            for line in plane.lines:
                if line.name in ("TraceMe", "Steps", "XLA Ops"):
                    continue
                for ev in line.events:
                    name = names.get(ev.metadata_id, "?")
                    # TensorFlow op events carry their kind ("MatMul", "_FusedMatMul", ...) after a colon.
                    kind = name.rsplit(":", 1)[-1] if ":" in name else name
                    for st in ev.stats:
                        if stats.get(st.metadata_id) == "tf_op":
                            kind = plane.stat_metadata[st.ref_value].name if st.ref_value else st.str_value
                            kind = kind.rsplit(":", 1)[-1]
                    if kind in _CONTAINERS or "__inference" in kind or kind == "train_step":
                        continue
                    ns[kind] += ev.duration_ps // 1000
                    count[kind] += 1
    return ns, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="L2-H128", choices=list(SIZES))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jit", action="store_true", help="XLA-compile the step")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print(
        f"load average {os.getloadavg()[0]:.2f}; {args.size} seq {args.seq} batch {args.batch}, XLA {args.jit}"
    )

    import numpy as np
    import tensorflow as tf

    _, train_step = classifier_and_step(args.size, args.jit)
    rng = np.random.default_rng(0)
    b, s = args.batch, args.seq
    x = {"token_ids": tf.constant(rng.integers(1000, VOCAB, (b, s)), tf.int32),
         "segment_ids": tf.zeros((b, s), tf.int32), "padding_mask": tf.ones((b, s), tf.int32)}  # fmt: skip
    y = tf.constant(rng.integers(0, 2, b), tf.int32)

    for _ in range(args.warmup):
        train_step(x, y).numpy()
    t = time.perf_counter()
    for _ in range(args.steps):
        train_step(x, y).numpy()
    wall = (time.perf_counter() - t) / args.steps
    print(f"unprofiled: {1000 * wall:.1f} ms/step, {b * s / wall:,.0f} tokens/s")

    logdir = Path(tempfile.mkdtemp(prefix="bertops-profile-"))
    tf.profiler.experimental.start(str(logdir))
    for _ in range(args.steps):
        train_step(x, y).numpy()
    tf.profiler.experimental.stop()
    ns, count = op_times(logdir)
    total = sum(ns.values()) or 1
    print(f"op time {total / 1e6 / args.steps:.1f} ms/step summed over threads ({logdir})")
    print(f"{'op':<44} {'ms/step':>8} {'share':>6} {'calls/step':>10}")
    for kind, v in ns.most_common(args.top):
        print(
            f"{kind[:44]:<44} {v / 1e6 / args.steps:>8.2f} {100 * v / total:>5.1f}% {count[kind] / args.steps:>10.1f}"
        )


if __name__ == "__main__":
    main()
