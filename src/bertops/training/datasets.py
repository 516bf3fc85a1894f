"""``tf.data`` input for the training loop, from the data step's TFRecords (``bertops.data.records``).

Training input is sharded per worker (by file when there are enough files, else by record), shuffled with a
fixed seed, repeated, batched with the *per-worker* batch size and prefetched. Because the order is a pure
function of the seed, a resumed run skips exactly the batches it had consumed (its data position) and sees
the same data as a run that never stopped::

    ds = train_dataset(files, manifest, batch_size=32, num_shards=2, shard_index=rank, seed=42, skip_batches=0)

Evaluation input is the whole split on every worker, batched, not repeated: each worker computes the same
metrics (identical weights, no dropout), so every worker takes the same early-stopping decision without a
collective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from bertops.data.records import parse_fn

# Read-ahead of the shuffle: records, not bytes (a tiny-model record is ~2 KB at seq 128).
DEFAULT_SHUFFLE_BUFFER = 10_000


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # We shard by hand (per worker); tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


def train_dataset(
    files: Sequence[str],
    manifest: Mapping[str, Any],
    *,
    batch_size: int,
    num_shards: int,
    shard_index: int,
    seed: int,
    skip_batches: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """Endless, shuffled batches of ``batch_size`` records of this worker's shard.

    ``skip_batches`` batches are dropped from the front: the data position of a resumed run.
    """
    if not files:
        raise ValueError("no training record files were given")
    if len(files) >= num_shards and len(files) % num_shards == 0:
        # Whole files per worker: each reads only its own.
        ds = tf.data.Dataset.from_tensor_slices(list(files)).shard(num_shards, shard_index)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.TFRecordDataset(list(files)).shard(num_shards, shard_index)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(
        parse_fn(manifest, batched=True), num_parallel_calls=tf.data.AUTOTUNE
    )
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    files: Sequence[str], manifest: Mapping[str, Any], *, batch_size: int, max_batches: int | None = None
) -> tf.data.Dataset:
    """The whole split (or its first ``max_batches`` batches), in file order, batched, last batch partial."""
    ds = tf.data.TFRecordDataset(list(files)).batch(batch_size)
    ds = ds.map(parse_fn(manifest, batched=True), num_parallel_calls=tf.data.AUTOTUNE)
    if max_batches is not None:
        ds = ds.take(max_batches)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
