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


def test_buckets_cut_the_same_global_batch_to_the_same_width_on_every_worker(
    synthetic_data: DataLayout,
) -> None:
    """Workers' rows of a step are cut to one width, the smallest bucket that holds the global batch's longest
    example; no real token is cut; the rows are those of the padded stream; a resumed stream matches."""
    for manifest_path in (
        synthetic_data.finetune_task_dir("classification") / MANIFEST,
        synthetic_data.pretrain_dir / MANIFEST,
    ):
        manifest, files = load_manifest(manifest_path), split_files(manifest_path, "train")
        kw = {"batch_size": 2, "num_shards": 2, "seed": 5}  # small global batches: their widths vary
        steps = 40
        padded = [_stream(files, manifest, steps, shard_index=r, **kw) for r in (0, 1)]
        cut = [
            _stream(files, manifest, steps, shard_index=r, sequence_buckets=[20, 24, 28], **kw)
            for r in (0, 1)
        ]
        widths = []
        for step in range(steps):
            w0, w1 = cut[0][step]["token_ids"].shape[1], cut[1][step]["token_ids"].shape[1]
            assert w0 == w1, (step, w0, w1)
            longest = max(int(np.nonzero(p["padding_mask"][i])[0].max()) + 1 for p in (padded[0][step],
                          padded[1][step]) for i in range(2))  # fmt: skip
            assert w0 == next(b for b in (20, 24, 28, 32) if b >= longest), (step, w0, longest)
            widths.append(w0)
            for rank in (0, 1):
                full, short = padded[rank][step], cut[rank][step]
                for key, value in short.items():
                    if value.ndim == 2 and value.shape[1] == w0 and key in ("token_ids", "segment_ids",
                                                                            "padding_mask", "labels"):  # fmt: skip
                        np.testing.assert_array_equal(value, full[key][:, :w0])
                        assert not full[key][:, w0:].any() or key == "labels"  # only padding was cut
                    else:
                        np.testing.assert_array_equal(value, full[key])
        assert len(set(widths)) > 1, widths  # the synthetic lengths span two buckets
        resumed = _stream(
            files, manifest, 10, shard_index=1, sequence_buckets=[20, 24, 28], skip_batches=30, **kw
        )
        for a, b in zip(resumed, cut[1][30:], strict=True):
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
