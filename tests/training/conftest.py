"""Synthetic TFRecord data for the training tests, written with the data step's own writer and feature spec.

- a 100-token vocabulary (``[PAD] [UNK] [CLS] [SEP] [MASK]`` + ``w5..w99``),
- pretraining records (seq 32, 5 predictions): segment A counts up from a random token, segment B continues
  the count (NSP label 0) or starts elsewhere (label 1), so both MLM and NSP are learnable,
- a classification set: a text is "positive" when it holds tokens of the positive group (w10..w19), else
  "negative" (w20..w29), among neutral filler; a small model learns it in a few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertops.config import BertopsConfig, load_config
from bertops.data.records import make_manifest, write_records
from bertops.paths import LABEL_MAP, MANIFEST, DataLayout

SEQ = 32
PREDS = 5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 100)]
CLS, SEP, MASK = 2, 3, 4
FIRST_WORD = 5


def _pack(a: list[int], b: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = [CLS, *a, SEP] + ([*b, SEP] if b else [])
    seg = [0] * (len(a) + 2) + ([1] * (len(b) + 1) if b else [])
    token_ids = np.zeros(SEQ, np.int64)
    segment_ids = np.zeros(SEQ, np.int64)
    mask = np.zeros(SEQ, np.int64)
    token_ids[: len(ids)], segment_ids[: len(ids)], mask[: len(ids)] = ids, seg, 1
    return token_ids, segment_ids, mask


def pretraining_features(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "token_ids", "segment_ids", "padding_mask", "masked_lm_positions",
            "masked_lm_ids", "masked_lm_weights", "next_sentence_label",
        )
    }  # fmt: skip
    span = 100 - FIRST_WORD
    for _ in range(n):
        la, lb = int(rng.integers(5, 13)), int(rng.integers(5, 13))
        start = int(rng.integers(0, span))
        a = [FIRST_WORD + (start + i) % span for i in range(la)]
        is_random = int(rng.integers(0, 2))
        b_start = int(rng.integers(0, span)) if is_random else start + la
        b = [FIRST_WORD + (b_start + i) % span for i in range(lb)]
        token_ids, segment_ids, mask = _pack(a, b)
        real = [i for i in range(1, len(a) + len(b) + 3) if token_ids[i] not in (CLS, SEP)]
        k = min(PREDS, max(1, round(0.15 * len(real))))
        pos = np.sort(rng.choice(real, size=k, replace=False))
        positions, ids, weights = (
            np.zeros(PREDS, np.int64),
            np.zeros(PREDS, np.int64),
            np.zeros(PREDS, np.float32),
        )
        positions[:k], ids[:k], weights[:k] = pos, token_ids[pos], 1.0
        token_ids = token_ids.copy()
        token_ids[pos] = MASK
        for key, value in zip(
            rows,
            (token_ids, segment_ids, mask, positions, ids, weights, np.array([is_random], np.int64)),
            strict=True,
        ):
            rows[key].append(value)
    return {k: np.stack(v) for k, v in rows.items()}


def classification_features(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    token_rows, seg_rows, mask_rows, labels = [], [], [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        length = int(rng.integers(8, SEQ - 2))
        words = list(rng.integers(30, 100, size=length))
        group = range(10, 20) if label == 1 else range(20, 30)
        for slot in rng.choice(length, size=3, replace=False):
            words[slot] = int(rng.choice(list(group)))
        t, s, m = _pack([int(w) for w in words])
        token_rows.append(t), seg_rows.append(s), mask_rows.append(m), labels.append([label])
    return {
        "token_ids": np.stack(token_rows),
        "segment_ids": np.stack(seg_rows),
        "padding_mask": np.stack(mask_rows),
        "label": np.array(labels, np.int64),
    }


def write_synthetic_data(root: Path, seed: int = 0) -> DataLayout:
    """Write vocab, pretraining and classification record sets under ``root`` (a data dir)."""
    rng = np.random.default_rng(seed)
    layout = DataLayout(root)
    layout.vocab_dir.mkdir(parents=True, exist_ok=True)
    layout.vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")

    pre = layout.pretrain_dir
    counts, files = {}, {}
    for split, n in (("train", 1024), ("heldout", 128)):
        (pre / split).mkdir(parents=True, exist_ok=True)
        rel = f"{split}/shard-00000.tfrecord"
        counts[split] = write_records(pre / rel, pretraining_features(n, rng))
        files[split] = [rel]
    manifest = make_manifest(
        "pretraining", max_seq_length=SEQ, num_examples=counts, files=files, vocab_size=len(VOCAB),
        max_predictions_per_seq=PREDS,
    )  # fmt: skip
    (pre / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")

    task_dir = layout.finetune_task_dir("classification")
    task_dir.mkdir(parents=True, exist_ok=True)
    counts, files = {}, {}
    for split, n in (("train", 512), ("validation", 128), ("test", 128)):
        counts[split] = write_records(task_dir / f"{split}.tfrecord", classification_features(n, rng))
        files[split] = [f"{split}.tfrecord"]
    labels = ["negative", "positive"]
    manifest = make_manifest(
        "classification", max_seq_length=SEQ, num_examples=counts, files=files, vocab_size=len(VOCAB),
        label_map=labels,
    )  # fmt: skip
    (task_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    (task_dir / LABEL_MAP).write_text(json.dumps({"labels": labels}), encoding="utf-8")
    return layout


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    return write_synthetic_data(tmp_path_factory.mktemp("bertops-train-data") / "data")


def training_config(
    repo_root: Path, data: DataLayout, state_dir: Path, overrides: list[str]
) -> BertopsConfig:
    """The repository's params.yaml on the synthetic data, a small model and short runs."""
    base = [
        f"project.data_dir={data.root}",
        f"project.state_dir={state_dir}",
        "model.preset=custom",
        "model.num_layers=1",
        "model.hidden_dim=64",
        "model.num_heads=2",
        "model.intermediate_dim=128",
        "model.max_sequence_length=64",
        "model.dropout=0.0",
        "pretrain_data.max_seq_length=32",
        "finetune_data.max_seq_length=32",
    ]
    return load_config(repo_root / "params.yaml", base + overrides)


@pytest.fixture(scope="module")
def on_session_ray(ray_cluster: Any) -> str:
    """The driver connected to the session's Ray head (other modules may have left another connection)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=ray_cluster.address)
    yield ray_cluster.address
    ray.shutdown()


def expected_batches(plan: Any, steps: int, start: int = 0) -> list[tuple[int, float]]:
    """(width, fingerprint) of the global batches of steps ``start + 1 .. start + steps`` of a run that never
    stopped: every worker's train input (``datasets.train_dataset``) rebuilt here from the plan. The shuffle
    order depends on TensorFlow's global seed too, which the loop sets from the plan's seed: so does this."""
    import keras

    from bertops.data.records import load_manifest, split_files
    from bertops.training.datasets import batch_fingerprint, train_dataset

    keras.utils.set_random_seed(plan.seed)

    manifest, files = load_manifest(plan.manifest), split_files(plan.manifest, plan.train_split)
    streams = [
        train_dataset(files, manifest, batch_size=plan.batch_size * plan.accumulation_steps,
                      num_shards=plan.num_workers, shard_index=rank, seed=plan.seed, skip_batches=start,
                      sequence_buckets=plan.sequence_buckets).take(steps)
        for rank in range(plan.num_workers)
    ]  # fmt: skip
    out = []
    for batches in zip(*streams, strict=True):
        widths = {int(b["token_ids"].shape[1]) for b in batches}
        assert len(widths) == 1, widths  # one width per step on every worker
        out.append((widths.pop(), float(sum(int(batch_fingerprint(b)) for b in batches))))
    return out
