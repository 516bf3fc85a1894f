"""Benchmark: the champion's latency with and without a shadow candidate, under the same load.

A throw-away MLflow server gets two freshly initialised bertops classifiers of the same size (``--preset``): v1
the champion, v2 the candidate. bertops serving (one replica, params.yaml's ``serving`` otherwise) serves v1;
the same load of single-text requests (aiohttp, ``--concurrency`` in flight) is sent with no candidate, then
with v2 shadowing (``POST /admin/shadow``: every answered request mirrored to it in the background), in
alternating rounds. Printed: p50/p99 of each, the p99 ratio (target, issue 20: at most 1.2), and what the shadow
compared and dropped (its bounded queue sheds load rather than slow the champion).

    .venv/bin/python benchmarks/shadow_latency.py                        # tiny preset, 400 requests a cell
    .venv/bin/python benchmarks/shadow_latency.py --requests 40 --rounds 1 --concurrency 4   # a smoke run
    .venv/bin/python benchmarks/shadow_latency.py --preset minilm --set serving.max_batch_size=16

Figures need an idle machine: on a shared one they say nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

# The sibling benchmark's harness (MLflow server, tiny classifier, local Ray + Serve, the aiohttp load).
from serving_load import (
    SENTENCES,
    load,
    percentile,
    register_tiny_classifier,
    start_bertops,
    start_mlflow_server,
    stop_bertops,
    stop_process_group,
)

from bertops.config import ShadowConfig
from bertops.serving import live_client as live


def ratio_line(what: str, off: float, on: float) -> str:
    """The champion's p99 without and with shadow, their ratio and the verdict against issue 20's 1.2."""
    verdict = "within" if on <= 1.2 * off else "NOT within"
    return (f"champion p99 {what}: {off:.1f} ms without shadow, {on:.1f} ms with: ratio {on / off:.2f} "
            f"({verdict} the 1.2 target)")  # fmt: skip


def main() -> None:
    from mlflow import MlflowClient

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset of both versions (or minilm: L6/H384/A12)")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--requests", type=int, default=400, help="requests per cell")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating without/with-shadow rounds")
    ap.add_argument(
        "--rate", type=float, default=None,
        help="open-loop arrivals at this many requests/s (live traffic below capacity); default: closed loop, "
        "the champion saturated",
    )  # fmt: skip
    ap.add_argument(
        "--set", action="append", default=[], help="serving overrides, e.g. serving.max_batch_size=16"
    )
    ap.add_argument(
        "--batch-texts", type=int, default=ShadowConfig().batch_texts, help="promotion.shadow.batch_texts"
    )
    ap.add_argument(
        "--quiet-ms", type=float, default=ShadowConfig().quiet_ms, help="promotion.shadow.quiet_ms"
    )
    args = ap.parse_args()
    shadow_cfg = ShadowConfig(batch_texts=args.batch_texts, quiet_ms=args.quiet_ms)

    name = "bert-shadow-bench"
    root = Path(tempfile.mkdtemp(prefix="bertops-shadow-bench-"))
    proc, uri, ray_env = None, None, {}
    try:
        proc, uri = start_mlflow_server(root)
        versions = []
        for tag in ("champion", "candidate"):  # each registration moves champion: put it back on v1 after
            (root / tag).mkdir()
            versions.append(register_tiny_classifier(uri, name, args.preset, root / tag, args.max_seq_length))
        MlflowClient(tracking_uri=uri).set_registered_model_alias(name, "champion", versions[0])
        url, ray_env = start_bertops(uri, name, ["serving.num_replicas=1", *args.set])
        body = lambda i: {"texts": [SENTENCES[i % len(SENTENCES)]]}  # noqa: E731
        asyncio.run(load(f"{url}/predict", body, min(64, args.requests), args.concurrency))  # warm-up
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; champion v{versions[0]}, candidate "
              f"v{versions[1]} ({args.preset}); {args.requests} requests a cell at concurrency {args.concurrency}, "
              f"{f'open loop at {args.rate:g} req/s' if args.rate else 'closed loop'}; "
              f"shadow batch_texts {shadow_cfg.batch_texts}, quiet_ms {shadow_cfg.quiet_ms:g}")  # fmt: skip
        print(
            f"{'round':>5} | {'shadow':<6} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>8} | errors | compared | dropped"
        )
        p99 = {False: [], True: []}
        pooled = {False: [], True: []}
        tally = {"compared": 0, "dropped": 0}
        shadow_s = 0.0  # wall time with the shadow on
        for r in range(args.rounds):
            for shadow in (False, True):
                if shadow:
                    live.start_shadow(url, name, versions[1], shadow_cfg)
                cell = asyncio.run(load(f"{url}/predict", body, args.requests, args.concurrency, args.rate))
                report = {"compared": "-", "dropped": "-"}
                if shadow:
                    live.stop_shadow(url, name)
                    report = live.candidate(url, name)["report"]
                    live.rollback(url, name)  # a fresh tally next round
                    tally = {k: tally[k] + int(report[k]) for k in tally}
                    shadow_s += args.requests / cell["rps"]
                p99[shadow].append(cell["p99_ms"])
                pooled[shadow].extend(cell["latencies_ms"])
                print(f"{r:>5} | {'on' if shadow else 'off':<6} | {cell['p50_ms']:>8.1f} | {cell['p99_ms']:>8.1f} | "
                      f"{cell['rps']:>8.1f} | {int(cell['errors']):>6} | {report['compared']:>8} | {report['dropped']:>7}")  # fmt: skip
        print(ratio_line(f"median over {args.rounds} round(s)", statistics.median(p99[False]),
                         statistics.median(p99[True])))  # fmt: skip
        print(ratio_line(f"of all {len(pooled[False])} requests of each setting",
                         *(percentile(sorted(pooled[s]), 0.99) for s in (False, True))))  # fmt: skip
        print(f"shadow compared {tally['compared']} of {tally['compared'] + tally['dropped']} mirrored requests, "
              f"{tally['compared'] / shadow_s:.1f}/s (what is still queued when a cell stops counts as dropped: "
              f"{tally['dropped']})")  # fmt: skip
    finally:
        stop_bertops(ray_env)
        if proc is not None:
            stop_process_group(proc)


if __name__ == "__main__":
    main()
