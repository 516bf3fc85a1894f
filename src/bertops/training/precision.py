"""Which Keras dtype policy a worker trains in: ``model.dtype_policy`` as set, or for ``auto`` its device's best.

``auto`` resolves on the worker (the driver may run on another machine) to ``mixed_bfloat16`` only where the
device runs bfloat16 natively *and* bfloat16 was measured faster than float32 there at equal accuracy
(``benchmarks/model_throughput.py --precision both`` prints both rows); otherwise to ``float32``::

    resolve_dtype_policy("auto")             # "float32" on a CPU without AVX512_BF16/AMX_BF16
    cpu_bf16_flags()                          # e.g. ("avx512_bf16", "amx_bf16") from /proc/cpuinfo

A CPU with AVX512_BF16 or AMX_BF16 runs oneDNN's bf16 matmuls; without them TensorFlow emulates bfloat16 and
is far slower than float32. Whether bf16 wins on a CPU that has them depends on the model size (small
matmuls are bound by the element-wise ops around them, which bf16 does not speed up): until the benchmark
shows it on an idle machine, :data:`BF16_MEASURED_FASTER` keeps ``auto`` at float32 everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either gives native bf16 dot products on x86
# Where benchmarks/model_throughput.py measured mixed_bfloat16 faster than float32 (train step, equal loss):
# "cpu" and/or "gpu". Empty until figures from an idle machine are recorded in docs/benchmarks.md.
BF16_MEASURED_FASTER: frozenset[str] = frozenset()
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The bf16 flags the CPU advertises (Linux ``/proc/cpuinfo``; empty elsewhere or when unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break  # every core lists the same flags
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def resolve_dtype_policy(
    requested: str,
    *,
    on_gpu: bool = False,
    cpu_flags: tuple[str, ...] | None = None,
    measured_faster: frozenset[str] = BF16_MEASURED_FASTER,
) -> str:
    """The concrete Keras policy for ``requested`` (``auto`` or one of :data:`POLICIES`) on this worker."""
    if requested in POLICIES:
        return requested
    if requested != "auto":
        raise ValueError(f"model.dtype_policy must be auto or one of {POLICIES}, got {requested!r}")
    device = "gpu" if on_gpu else "cpu"
    # GPUs that TensorFlow runs (compute capability 8.0+ for bf16) are trusted to have it; CPUs must say so.
    supported = on_gpu or bool(cpu_bf16_flags() if cpu_flags is None else cpu_flags)
    chosen = "mixed_bfloat16" if supported and device in measured_faster else "float32"
    log.info("model.dtype_policy=auto on %s (bf16 %s, measured faster: %s) -> %s",
             device, "supported" if supported else "not supported", device in measured_faster, chosen)  # fmt: skip
    return chosen
