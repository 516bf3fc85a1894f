"""Train-step throughput and batch-1 latency: bertops' Keras BERT vs Hugging Face transformers on PyTorch.

    .venv/bin/python benchmarks/model_throughput.py --reference-python /tmp/refvenv/bin/python

For each size (L2/H128/A2 and L6/H384/A12 by default; seq 64, batch 32, vocab 30,522, two classes) it times
a sequence-classification train step (forward, cross-entropy, backward, AdamW update) and batch-1 inference,
for bertops (TensorFlow, tf.function, optionally XLA) and, when ``--reference-python`` points at an interpreter
with torch + transformers, for ``BertForSequenceClassification`` on PyTorch in a subprocess, one after the other
(never concurrently), and prints both figures and the ratio. The machine's other load affects both; rerun
when figures look off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {"L2-H128": (2, 128, 2), "L6-H384": (6, 384, 12)}
VOCAB = 30522


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": 1000 * times[len(times) // 2], "mean_ms": 1000 * sum(times) / len(times)}


# ----------------------------------------------------------------------------------------------- bertops
def bench_bertops(size: str, seq: int, batch: int, steps: int, warmup: int, jit: bool) -> dict[str, float]:
    import keras
    import numpy as np
    import tensorflow as tf

    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertClassifier

    layers, hidden, heads = SIZES[size]
    keras.utils.set_random_seed(0)
    backbone = BertBackbone(VOCAB, layers, heads, hidden, 4 * hidden, dropout=0.1, max_sequence_length=512)
    model = BertClassifier(backbone, num_classes=2)
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": tf.constant(rng.integers(1000, VOCAB, (batch, seq)), tf.int32),
        "segment_ids": tf.zeros((batch, seq), tf.int32),
        "padding_mask": tf.ones((batch, seq), tf.int32),
    }
    y = tf.constant(rng.integers(0, 2, batch), tf.int32)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def train_step(x: dict, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    for _ in range(warmup):
        train_step(x, y).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(x, y).numpy()
    elapsed = time.perf_counter() - start

    @tf.function(jit_compile=jit)
    def infer(x: dict) -> tf.Tensor:
        return tf.nn.softmax(model(x, training=False))

    one = {k: v[:1] for k, v in x.items()}
    for _ in range(5):
        infer(one).numpy()
    lat = []
    for _ in range(30):
        t = time.perf_counter()
        infer(one).numpy()
        lat.append(time.perf_counter() - t)
    return {
        "tokens_per_s": steps * batch * seq / elapsed,
        **{f"infer_{k}": v for k, v in _stats(lat).items()},
    }


# ----------------------------------------------------------------------------------------------- reference
def bench_torch(size: str, seq: int, batch: int, steps: int, warmup: int) -> dict[str, float]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    layers, hidden, heads = SIZES[size]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, num_labels=2)  # fmt: skip
    model = BertForSequenceClassification(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(1000, VOCAB, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    labels = torch.randint(0, 2, (batch,))

    def step() -> None:
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    model.eval()
    lat = []
    with torch.no_grad():
        for i in range(35):
            t = time.perf_counter()
            torch.softmax(model(input_ids=ids[:1], attention_mask=mask[:1]).logits, -1)
            if i >= 5:
                lat.append(time.perf_counter() - t)
    return {
        "tokens_per_s": steps * batch * seq / elapsed,
        **{f"infer_{k}": v for k, v in _stats(lat).items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-jit", action="store_true", help="bertops without XLA (jit_compile=False)")
    p.add_argument(
        "--reference-python", help="interpreter with torch + transformers (e.g. /tmp/refvenv/bin/python)"
    )
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: run the reference for one size
    args = p.parse_args()

    if args.torch_worker:
        print(json.dumps(bench_torch(args.torch_worker, args.seq, args.batch, args.steps, args.warmup)))
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rows = []
    for size in args.sizes:
        ours = bench_bertops(size, args.seq, args.batch, args.steps, args.warmup, jit=not args.no_jit)
        ref = None
        if args.reference_python:
            proc = subprocess.run(
                [args.reference_python, __file__, "--torch-worker", size, "--seq", str(args.seq),
                 "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            ref = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((size, ours, ref))
        line = (
            f"{size}: bertops {ours['tokens_per_s']:,.0f} tokens/s, batch-1 p50 {ours['infer_p50_ms']:.1f} ms"
        )
        if ref:
            line += (
                f" | transformers/torch {ref['tokens_per_s']:,.0f} tokens/s, batch-1 p50 {ref['infer_p50_ms']:.1f} ms"
                f" | train ratio {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x,"
                f" latency ratio {ours['infer_p50_ms'] / ref['infer_p50_ms']:.2f} (lower is better)"
            )
        print(line, flush=True)
    print(json.dumps({"seq": args.seq, "batch": args.batch, "jit": not args.no_jit,
                      "results": {s: {"bertops": o, "reference": r} for s, o, r in rows}}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
