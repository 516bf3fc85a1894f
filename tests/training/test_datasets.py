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


def test_bucket_lengths_end_at_the_records_width() -> None:
    from bertops.training.datasets import bucket_lengths

    assert bucket_lengths([16, 32, 64, 128], 128) == [16, 32, 64, 128]
    assert bucket_lengths([16, 32, 64, 128], 48) == [16, 32, 48]
    assert bucket_lengths([], 128) == [128]


def _stream(files, manifest, steps: int, **kw) -> list[dict[str, np.ndarray]]:
    from bertops.training.datasets import train_dataset

    return [{k: v.numpy() for k, v in b.items()} for b in train_dataset(files, manifest, **kw).take(steps)]


def _key(row: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in np.trim_zeros(row, "b"))


def test_buckets_group_each_global_batch_by_length_and_cut_it_the_same_on_every_worker(
    synthetic_data: DataLayout,
) -> None:
    """Each global batch holds records of one length bucket only, and the workers' rows of a step are cut to
    that bucket's width (the same on every worker); every row is a real record with no real token cut; the
    stream covers the data; a resumed stream sees the batches of one that never stopped."""
    from bertops.training.datasets import eval_dataset

    buckets = [20, 24, 28]
    for manifest_path in (
        synthetic_data.finetune_task_dir("classification") / MANIFEST,
        synthetic_data.pretrain_dir / MANIFEST,
    ):
        manifest, files = load_manifest(manifest_path), split_files(manifest_path, "train")
        records = {}
        for batch in eval_dataset(files, manifest, batch_size=64):
            batch = {k: v.numpy() for k, v in batch.items()}
            for i in range(len(batch["token_ids"])):
                records[_key(batch["token_ids"][i])] = {k: v[i] for k, v in batch.items()}
        full_width = int(manifest["max_seq_length"])
        kw = {"batch_size": 2, "num_shards": 2, "seed": 5}
        steps = 60
        cut = [_stream(files, manifest, steps, shard_index=r, sequence_buckets=buckets, **kw) for r in (0, 1)]
        widths, seen = [], set()
        for step in range(steps):
            w0, w1 = cut[0][step]["token_ids"].shape[1], cut[1][step]["token_ids"].shape[1]
            assert w0 == w1, (step, w0, w1)
            widths.append(w0)
            for rank in (0, 1):
                short = cut[rank][step]
                for i in range(len(short["token_ids"])):
                    length = int(short["padding_mask"][i].sum())
                    # the row's own bucket is the batch's: the batch was grouped by length, not cut to its longest
                    assert w0 == next(b for b in (*buckets, full_width) if b >= length), (step, w0, length)
                    record = records[_key(short["token_ids"][i])]  # a real record, found by its tokens
                    seen.add(_key(short["token_ids"][i]))
                    for key, value in short.items():
                        if key in ("token_ids", "segment_ids", "padding_mask", "labels") and value.ndim == 2:
                            np.testing.assert_array_equal(value[i], record[key][:w0])
                            assert not record[key][w0:].any() or key == "labels"  # only padding was cut
                        else:
                            np.testing.assert_array_equal(value[i], record[key])
        assert len(set(widths)) > 1, widths  # the synthetic lengths span two buckets
        assert len(seen) > 0.8 * min(len(records), steps * 4), (len(seen), len(records))
        resumed = _stream(files, manifest, 10, shard_index=1, sequence_buckets=buckets, skip_batches=30, **kw)
        for a, b in zip(resumed, cut[1][30:40], strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_eval_batches_are_cut_per_batch(synthetic_data: DataLayout) -> None:
    from bertops.training.datasets import eval_dataset

    path = synthetic_data.finetune_task_dir("classification") / MANIFEST
    manifest, files = load_manifest(path), split_files(path, "validation")
    full = list(eval_dataset(files, manifest, batch_size=4))
    cut = list(eval_dataset(files, manifest, batch_size=4, sequence_buckets=[16]))
    assert len(full) == len(cut) == 32
    for f, c in zip(full, cut, strict=True):
        w = c["token_ids"].shape[1]
        assert w in (16, 32) and int(f["padding_mask"].numpy().sum()) == int(c["padding_mask"].numpy().sum())
        np.testing.assert_array_equal(c["token_ids"].numpy(), f["token_ids"].numpy()[:, :w])
