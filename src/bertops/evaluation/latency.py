"""Inference latency of a predict function at fixed batch sizes, measured on real test texts.

    lat = measure_latency(candidate.predict_proba, texts, batch_sizes=(1, 32), repeats=20)
    lat["latency_p50_ms_batch1"], lat["latency_p95_ms_batch32"]

Each batch size gets one untimed warm-up call first (graph tracing, caches), then ``repeats`` timed calls on
consecutive slices of the texts (cycled), so the figure is the steady-state cost a served request pays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def measure_latency(
    predict: Callable[[list[str]], Any],
    texts: Sequence[str],
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
) -> dict[str, float]:
    """p50/p95/mean wall-clock milliseconds per call, per batch size: ``latency_<stat>_ms_batch<b>``."""
    if not texts:
        raise ValueError("latency needs at least one text")
    out: dict[str, float] = {}
    pool = list(texts)
    for b in batch_sizes:
        batches = [
            [pool[(start + i) % len(pool)] for i in range(b)] for start in range(0, b * (repeats + 1), b)
        ]
        predict(batches[0])  # warm-up, untimed
        times = []
        for batch in batches[1:]:
            t0 = time.perf_counter()
            predict(batch)
            times.append((time.perf_counter() - t0) * 1000.0)
        arr = np.asarray(times)
        out[f"latency_p50_ms_batch{b}"] = float(np.percentile(arr, 50))
        out[f"latency_p95_ms_batch{b}"] = float(np.percentile(arr, 95))
        out[f"latency_mean_ms_batch{b}"] = float(arr.mean())
    return out
