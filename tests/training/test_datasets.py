"""Training input: per-worker shards that partition the data, and an exact data position on resume."""

from __future__ import annotations

import numpy as np

from bertops.data.records import load_manifest, split_files
from bertops.paths import MANIFEST, DataLayout


def _rows(ds, n: int) -> list[tuple[int, ...]]:
    out = []
    for batch in ds.take(n):
        out.extend(tuple(r) for r in batch["token_ids"].numpy())
    return out


def test_shards_partition_the_records_and_skip_resumes_exactly(synthetic_data: DataLayout) -> None:
    from bertops.training.datasets import eval_dataset, train_dataset

    path = synthetic_data.finetune_task_dir("classification") / MANIFEST
    manifest, files = load_manifest(path), split_files(path, "train")
    kw = {"batch_size": 16, "num_shards": 2, "seed": 3}
    shard0 = _rows(train_dataset(files, manifest, shard_index=0, **kw), 16)  # one pass: 256 records
    shard1 = _rows(train_dataset(files, manifest, shard_index=1, **kw), 16)
    assert len(set(shard0)) == 256 and set(shard0).isdisjoint(shard1)
    everything = _rows(eval_dataset(files, manifest, batch_size=64), 100)
    assert set(shard0) | set(shard1) == set(everything) and len(everything) == 512

    full = _rows(train_dataset(files, manifest, shard_index=0, **kw), 40)  # crosses an epoch boundary
    resumed = _rows(train_dataset(files, manifest, shard_index=0, skip_batches=25, **kw), 15)
    assert resumed == full[25 * 16 :]
    batch = next(iter(train_dataset(files, manifest, shard_index=0, **kw)))
    assert batch["token_ids"].dtype.name == "int32" and batch["label"].shape == (16, 1)
    assert np.all(batch["padding_mask"].numpy()[:, 0] == 1)
