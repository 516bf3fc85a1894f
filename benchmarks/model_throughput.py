"""Train-step throughput and batch-1 latency: bertops' Keras BERT vs Hugging Face transformers on PyTorch.

    .venv/bin/python benchmarks/model_throughput.py --reference-python /tmp/refvenv/bin/python
    .venv/bin/python benchmarks/model_throughput.py --precision float32 mixed_bfloat16 --lengths data/finetune/classification

For each size (L2/H128/A2 and L6/H384/A12 by default; seq 64, batch 32, vocab 30,522, two classes) it times
a sequence-classification train step (forward, cross-entropy, backward, AdamW update) and batch-1 inference,
for bertops (TensorFlow, tf.function; XLA with ``--jit``, slower on this CPU) in each ``--precision`` (a bf16 row next to float32;
the CPU's bf16 flags are printed, ``bertops.training.precision``) and, when ``--reference-python`` points at
an interpreter with torch + transformers, for ``BertForSequenceClassification`` on PyTorch in a subprocess,
one after the other (never concurrently), and prints both figures and the ratio. Each row gives tokens/s
(real tokens), the padding share and the achieved model FLOP/s (``6 N + 12 L H S`` per token,
``bertops.training.flops``), so the distance to the hardware is visible.

``--lengths`` gives the batches real text lengths: a record set's directory (its train split's lengths) or
``uniform`` (8..seq). bertops then runs two rows per precision: ``padded`` (every batch at ``--seq``) and
``buckets`` (batches grouped by length and cut to ``--buckets``, as the training input does); the reference stays at full length.
Without ``--lengths`` every token is real. The machine's other load affects both; rerun when figures look
off, and take figures only on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = {"L2-H128": (2, 128, 2), "L6-H384": (6, 384, 12)}
VOCAB = 30522


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": 1000 * times[len(times) // 2], "mean_ms": 1000 * sum(times) / len(times)}


def sample_lengths(spec: str | None, n: int, seq: int) -> list[int]:
    """``n`` text lengths (word pieces incl. [CLS]/[SEP]) at most ``seq``: from a record set or uniform."""
    import numpy as np

    rng = np.random.default_rng(0)
    if spec is None:
        return [seq] * n
    if spec == "uniform":
        return rng.integers(8, seq + 1, n).tolist()
    from bertops.data.records import load_manifest, make_dataset

    path = Path(spec)
    manifest = path / "manifest.json" if path.is_dir() else path
    load_manifest(manifest)
    lengths = [int(b["padding_mask"].numpy().sum()) for b in make_dataset(manifest, "train").take(4096)]
    return [min(seq, x) for x in rng.choice(lengths, n).tolist()]


def group_lengths(lengths: list[int], widths: list[int], batch: int) -> list[int]:
    """``lengths`` reordered into whole batches of one bucket each (in order of first appearance, as
    ``bertops.training.datasets.group_by_length`` emits them); a bucket's incomplete last batch is left out and
    the list is cycled back to its original size."""
    groups: dict[int, list[int]] = {}
    out: list[int] = []
    for n in lengths:
        group = groups.setdefault(next(w for w in widths if w >= n), [])
        group.append(n)
        if len(group) == batch:
            out.extend(group)
            group.clear()
    if not out:
        return lengths
    return (out * (len(lengths) // len(out) + 1))[: len(lengths)]


# ----------------------------------------------------------------------------------------------- bertops
def classifier_and_step(size: str, jit: bool, policy: str = "float32") -> tuple[Any, Any]:
    """The benchmarked model (vocab 30,522, two classes, ``policy`` compute) and its train step ``(x, y) -> loss``:
    forward, cross-entropy, dense gradients as the loop's (its embedding gradients are all-reduced across
    workers), bertops' optimizer (the loop's fused AdamW, LayerNorm and biases not decayed) at a constant rate."""
    import keras
    import tensorflow as tf

    from bertops.config import OptimizerConfig
    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertClassifier
    from bertops.training.optimization import build_optimizer

    layers, hidden, heads = SIZES[size]
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(policy)
    backbone = BertBackbone(VOCAB, layers, heads, hidden, 4 * hidden, dropout=0.1, max_sequence_length=512)
    model = BertClassifier(backbone, num_classes=2)
    keras.config.set_dtype_policy("float32")
    optimizer = build_optimizer(
        OptimizerConfig(learning_rate=1e-4, weight_decay=0.01, warmup_fraction=0.0), 10**9, model
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(x: dict, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return model, train_step


def bench_bertops(
    size: str, seq: int, batch: int, steps: int, warmup: int, jit: bool, policy: str = "float32",
    lengths: list[int] | None = None, buckets: list[int] | None = None,
) -> dict[str, float]:  # fmt: skip
    import numpy as np
    import tensorflow as tf

    from bertops.training.datasets import bucket_lengths, cut_to_bucket
    from bertops.training.flops import train_flops_per_token

    layers, hidden, _ = SIZES[size]
    model, train_step = classifier_and_step(size, jit, policy)
    rng = np.random.default_rng(0)
    widths = bucket_lengths(buckets or [], seq)
    lengths = lengths or [seq] * (batch * steps)
    if len(widths) > 1:  # as the training input groups them: each batch holds lengths of one bucket
        lengths = group_lengths(lengths, widths, batch)
    batches = []
    for i in range(steps):
        mask = (np.arange(seq)[None, :] < np.asarray(lengths[i * batch : (i + 1) * batch])[:, None]).astype(
            "int32"
        )
        ids = rng.integers(1000, VOCAB, (batch, seq)) * mask
        full = {"token_ids": tf.constant(ids, tf.int32), "segment_ids": tf.zeros((batch, seq), tf.int32),
                "padding_mask": tf.constant(mask)}  # fmt: skip
        batches.append(cut_to_bucket(full, widths))
    y = tf.constant(rng.integers(0, 2, batch), tf.int32)
    num_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))

    seen: dict[int, dict] = {}
    for x in batches:  # one trace / XLA program per width before timing, then ``warmup`` more steps
        seen.setdefault(int(x["token_ids"].shape[1]), x)
    for x in [*seen.values(), *batches[:warmup]]:
        train_step(x, y).numpy()
    real = positions = flops = 0.0
    start = time.perf_counter()
    for x in batches:
        train_step(x, y).numpy()
    elapsed = time.perf_counter() - start
    for x in batches:
        width, n = int(x["token_ids"].shape[1]), float(tf.reduce_sum(x["padding_mask"]))
        real, positions = real + n, positions + batch * width
        flops += n * train_flops_per_token(num_params, layers, hidden, width)

    @tf.function(jit_compile=jit)
    def infer(x: dict) -> tf.Tensor:
        return tf.nn.softmax(model(x, training=False))

    one = {k: v[:1] for k, v in batches[0].items()}
    for _ in range(5):
        infer(one).numpy()
    lat = []
    for _ in range(30):
        t = time.perf_counter()
        infer(one).numpy()
        lat.append(time.perf_counter() - t)
    return {
        "tokens_per_s": real / elapsed,
        "padding_share": 1.0 - real / positions,
        "model_flops_per_s": flops / elapsed,
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
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens_per_s = steps * batch * seq / elapsed
    return {
        "tokens_per_s": tokens_per_s,
        "padding_share": 0.0,
        "model_flops_per_s": tokens_per_s * (6.0 * num_params + 12.0 * layers * hidden * seq),
        **{f"infer_{k}": v for k, v in _stats(lat).items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--jit", action="store_true",
        help="bertops with XLA (jit_compile=True); default: no XLA, the loop's default, faster on this CPU",
    )  # fmt: skip
    p.add_argument(
        "--precision",
        nargs="+",
        default=["float32", "mixed_bfloat16"],
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
        help="bertops dtype policies",
    )
    p.add_argument(
        "--lengths", help="real text lengths: a record set directory (its train split) or 'uniform'"
    )
    p.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64, 128], help="with --lengths")
    p.add_argument(
        "--reference-python", help="interpreter with torch + transformers (e.g. /tmp/refvenv/bin/python)"
    )
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: run the reference for one size
    args = p.parse_args()

    if args.torch_worker:
        print(json.dumps(bench_torch(args.torch_worker, args.seq, args.batch, args.steps, args.warmup)))
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from bertops.training.precision import cpu_bf16_flags

    print(f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none (bf16 is emulated: expect it slower)'}")
    lengths = sample_lengths(args.lengths, args.batch * args.steps, args.seq) if args.lengths else None
    modes = {"padded": None, "buckets": args.buckets} if lengths else {"full": None}
    results: dict[str, dict] = {}
    for size in args.sizes:
        ref = None
        if args.reference_python:
            proc = subprocess.run(
                [args.reference_python, __file__, "--torch-worker", size, "--seq", str(args.seq),
                 "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            ref = json.loads(proc.stdout.strip().splitlines()[-1])
            print(_row(f"{size} transformers/torch float32 full", ref), flush=True)
        rows = {}
        for policy in args.precision:
            for mode, buckets in modes.items():
                ours = bench_bertops(size, args.seq, args.batch, args.steps, args.warmup, args.jit,
                                     policy, lengths, buckets)  # fmt: skip
                rows[f"{policy}/{mode}"] = ours
                line = _row(f"{size} bertops {policy} {mode}", ours)
                if ref:
                    line += f" | {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x torch"
                base = rows.get(f"float32/{mode}")
                if base is not ours and base:
                    line += f" | {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x float32"
                print(line, flush=True)
        results[size] = {"bertops": rows, "reference": ref}
    print(json.dumps({"seq": args.seq, "batch": args.batch, "jit": args.jit, "lengths": args.lengths,
                      "buckets": args.buckets if lengths else None, "results": results}))  # fmt: skip


def _row(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<40} {r['tokens_per_s']:>10,.0f} real tokens/s  padding {r['padding_share']:5.1%}  "
        f"{r['model_flops_per_s'] / 1e9:8.1f} GFLOP/s  batch-1 p50 {r['infer_p50_ms']:.1f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
