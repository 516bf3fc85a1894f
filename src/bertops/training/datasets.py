"""``tf.data`` input for the training loop, from the data step's TFRecords (``bertops.data.records``).

Training input is one stream of *global* batches (``batch_size x num_shards`` records), the same on every
worker: shuffled with a fixed seed, repeated, batched. Each worker keeps its own ``batch_size`` rows of each
global batch, so the workers' rows partition the data, and every worker knows the whole global batch.

Dynamic padding with length buckets: the records are padded to ``max_seq_length``, but most texts are far
shorter. With ``sequence_buckets`` set, the shuffled stream is grouped by length: each record goes to the
smallest bucket (of ``sequence_buckets``, with ``max_seq_length`` always the last) that holds it, and a global
batch is made of records of one bucket only (``tf.data.Dataset.group_by_window``), then cut to that bucket's
width. Random batches would be cut to their longest example, which is nearly always long: grouping is what
removes the padding. The width is a function of the global batch, so every worker cuts its rows to the same
width at the same step: under ``MultiWorkerMirroredStrategy`` the workers trace and run the same step
functions in the same order (no shape mismatch, no collective out of step), and XLA compiles at most one
program per bucket. Padding is on the right and masked, so a cut changes no real token's output.

Because the order is a pure function of the seed (and of TensorFlow's global seed, which the loop sets
from the same seed), a resumed run skips exactly the global batches it had
consumed (its data position) and sees the same batches, cut the same way, as a run that never stopped::

    ds = train_dataset(files, manifest, batch_size=32, num_shards=2, shard_index=rank, seed=42,
                       skip_batches=0, sequence_buckets=[16, 32, 64, 128])

Evaluation input is the whole split on every worker, batched, each batch cut to its bucket, not repeated:
each worker computes the same metrics (identical weights, no dropout), so every worker takes the same
early-stopping decision without a collective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from bertops.data.records import IGNORE_INDEX, parse_fn

# Read-ahead of the shuffle: records, not bytes (a tiny-model record is ~2 KB at seq 128).
DEFAULT_SHUFFLE_BUFFER = 10_000


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # We shard by hand (per worker); tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


# Features with one value per token position (cut with the batch); the others (label, masked-LM
# predictions) are per example. NER's ``labels`` are -100 on padding, so a cut drops nothing the loss sees.
SEQUENCE_FEATURES = ("token_ids", "segment_ids", "padding_mask", "labels")


# Token-labelled batches (NER) carry, on every row, the global batch's labelled tokens per example: the loss is
# averaged over the labelled tokens of the whole global batch (every worker, every accumulated micro-batch), so
# accumulation and more workers give the loss of one batch without them (``NerTask.per_example_loss``).
LABELLED_TOKENS_PER_EXAMPLE = "labelled_tokens_per_example"


def labelled_tokens_per_example(labels: tf.Tensor) -> tf.Tensor:
    """``(rows,)`` float32: the batch's labelled (not -100) tokens divided by its rows, repeated per row."""
    rows = tf.shape(labels)[0]
    labelled = tf.reduce_sum(tf.cast(labels != IGNORE_INDEX, tf.float32))
    return tf.fill([rows], labelled / tf.cast(rows, tf.float32))


def bucket_lengths(sequence_buckets: Sequence[int], max_seq_length: int) -> list[int]:
    """The widths a batch may be cut to: the buckets shorter than ``max_seq_length``, then ``max_seq_length``.

    ``bucket_lengths([16, 32, 64, 128], 64) == [16, 32, 64]``; ``bucket_lengths([], 128) == [128]`` (no cut).
    """
    return [b for b in sorted(set(sequence_buckets)) if b < max_seq_length] + [max_seq_length]


def _bucket_index(padding_mask: tf.Tensor, lengths: Sequence[int]) -> tf.Tensor:
    """The index in ``lengths`` of the smallest width that holds every real token of a ``(rows, T)`` mask.

    A row's length is its last real position + 1 (robust to a mask with holes); ``lengths[-1]`` is the
    records' full width, so there is always one that fits.
    """
    positions = tf.range(1, tf.shape(padding_mask)[1] + 1)
    need = tf.reduce_max(tf.where(padding_mask > 0, positions[None, :], 0))
    table = tf.constant(list(lengths), tf.int32)
    return tf.argmax(tf.cast(table >= need, tf.int32), output_type=tf.int32)


def batch_width(padding_mask: tf.Tensor, lengths: Sequence[int]) -> tf.Tensor:
    """The smallest of ``lengths`` that holds every real token of the batch (int32 scalar)."""
    return tf.gather(tf.constant(list(lengths), tf.int32), _bucket_index(padding_mask, lengths))


def record_bucket(padding_mask: tf.Tensor, lengths: Sequence[int]) -> tf.Tensor:
    """The index in ``lengths`` of the smallest width that holds one record's real tokens (int64 scalar)."""
    return tf.cast(_bucket_index(padding_mask[None, :], lengths), tf.int64)


def group_by_length(
    serialized: tf.data.Dataset, manifest: Mapping[str, Any], lengths: Sequence[int], global_batch: int
) -> tf.data.Dataset:
    """Global batches of serialised records of one length bucket each, in the stream's order within a bucket.

    Deterministic for a deterministic input stream (``group_by_window`` keeps the order it sees), so a resumed
    run that skips ``n`` of these batches sees the batches of a run that never stopped.
    """
    parse_one = parse_fn(manifest)

    def key(record: tf.Tensor) -> tf.Tensor:
        return record_bucket(parse_one(record)["padding_mask"], lengths)

    return serialized.group_by_window(
        key_func=key,
        reduce_func=lambda _, window: window.batch(global_batch, drop_remainder=True),
        window_size=global_batch,
    )


def cut_to_bucket(batch: dict[str, tf.Tensor], lengths: Sequence[int]) -> dict[str, tf.Tensor]:
    """The batch with its per-token features cut to :func:`batch_width` columns."""
    if len(lengths) == 1:
        return batch  # padding to max_seq_length: nothing to cut, and the shapes stay static
    width = batch_width(batch["padding_mask"], lengths)
    return {k: v[:, :width] if k in SEQUENCE_FEATURES else v for k, v in batch.items()}


def batch_fingerprint(batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """A checksum of the examples in a batch: ``sum(token_id * (position + 1))`` (int64 scalar).

    Padding ids are 0, so it does not depend on the cut; summed over the workers it identifies the global batch
    a step trained on (logged as ``batch_fingerprint``: a resumed run's must match an uninterrupted run's).
    """
    ids = tf.cast(batch["token_ids"], tf.int64)
    positions = tf.range(1, tf.shape(ids, out_type=tf.int64)[1] + 1)
    return tf.reduce_sum(ids * positions[None, :])


def train_dataset(
    files: Sequence[str],
    manifest: Mapping[str, Any],
    *,
    batch_size: int,
    num_shards: int,
    shard_index: int,
    seed: int,
    skip_batches: int = 0,
    sequence_buckets: Sequence[int] = (),
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """Endless, shuffled batches of this worker's ``batch_size`` rows of each global batch, grouped by length
    and cut to their bucket when ``sequence_buckets`` is set.

    ``skip_batches`` global batches are dropped from the front (unparsed): the data position of a resumed run.
    """
    if not files:
        raise ValueError("no training record files were given")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
    lengths = bucket_lengths(sequence_buckets, int(manifest["max_seq_length"]))
    ds = tf.data.TFRecordDataset(list(files))
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    if len(lengths) > 1:
        ds = group_by_length(ds, manifest, lengths, batch_size * num_shards)
    else:
        ds = ds.batch(batch_size * num_shards, drop_remainder=True)
    if skip_batches:
        ds = ds.skip(skip_batches)
    parse = parse_fn(manifest, batched=True)
    lo, hi = shard_index * batch_size, (shard_index + 1) * batch_size

    def worker_rows(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = cut_to_bucket(parse(serialized), lengths)  # the width follows the whole global batch
        if "labels" in batch and batch["labels"].shape.rank == 2:
            batch[LABELLED_TOKENS_PER_EXAMPLE] = labelled_tokens_per_example(batch["labels"])
        return {k: v[lo:hi] for k, v in batch.items()}

    ds = ds.map(worker_rows, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    files: Sequence[str],
    manifest: Mapping[str, Any],
    *,
    batch_size: int,
    max_batches: int | None = None,
    sequence_buckets: Sequence[int] = (),
) -> tf.data.Dataset:
    """The whole split (or its first ``max_batches`` batches), in file order, batched, last batch partial,
    each batch cut to its bucket."""
    lengths = bucket_lengths(sequence_buckets, int(manifest["max_seq_length"]))
    parse = parse_fn(manifest, batched=True)
    ds = tf.data.TFRecordDataset(list(files)).batch(batch_size)
    if max_batches is not None:
        ds = ds.take(max_batches)
    ds = ds.map(lambda s: cut_to_bucket(parse(s), lengths), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
