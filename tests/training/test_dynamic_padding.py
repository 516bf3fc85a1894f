"""Dynamic padding changes no loss: a batch cut to its bucket gives each example the loss it has padded to
``max_seq_length`` (padding is on the right and masked), for pretraining, classification and NER heads; with
token-weighted NER loss the batch's labelled tokens are the same either way."""

from __future__ import annotations

import numpy as np
import pytest

from bertops.data.records import IGNORE_INDEX, load_manifest, split_files
from bertops.paths import MANIFEST, DataLayout

BUCKETS = [16, 24]


def _backbone():
    from bertops.config import ModelConfig
    from bertops.model.presets import backbone_from_config

    arch = ModelConfig(preset="custom", num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64,
                       max_sequence_length=64, dropout=0.0)  # fmt: skip
    return backbone_from_config(arch, 100)


def _batches(manifest_path, buckets):
    from bertops.training.datasets import train_dataset

    manifest, files = load_manifest(manifest_path), split_files(manifest_path, "train")
    ds = train_dataset(files, manifest, batch_size=8, num_shards=1, shard_index=0, seed=1,
                       sequence_buckets=buckets)  # fmt: skip
    return list(ds.take(6))


def _padded_back(batch, width: int):
    import tensorflow as tf

    from bertops.training.datasets import SEQUENCE_FEATURES

    def pad(key, value):
        if key not in SEQUENCE_FEATURES:
            return value
        fill = IGNORE_INDEX if key == "labels" else 0
        return tf.pad(value, [[0, 0], [0, width - int(value.shape[1])]], constant_values=fill)

    return {k: pad(k, v) for k, v in batch.items()}


def _ner_labels(batch):
    import tensorflow as tf

    ids = batch["token_ids"]
    return dict(batch, labels=tf.where(batch["padding_mask"] > 0, ids % 3, IGNORE_INDEX))


@pytest.mark.parametrize("kind", ["pretraining", "classification", "ner"])
def test_a_bucketed_batch_has_the_padded_batch_loss(kind: str, synthetic_data: DataLayout) -> None:
    import keras

    from bertops.model.heads import BertClassifier, BertPretrainer, BertTokenClassifier
    from bertops.training.tasks import ClassificationTask, NerTask, PretrainingTask

    keras.utils.set_random_seed(0)
    if kind == "pretraining":
        path = synthetic_data.pretrain_dir / MANIFEST
        task = PretrainingTask(model=BertPretrainer(_backbone()))
    else:
        path = synthetic_data.finetune_task_dir("classification") / MANIFEST
        head = BertClassifier if kind == "classification" else BertTokenClassifier
        model = head(_backbone(), num_classes=3, dropout=0.0)
        task = (ClassificationTask if kind == "classification" else NerTask)(model=model)
    widths = set()
    for short in _batches(path, BUCKETS):
        full = _padded_back(short, 32)  # the same examples, padded to max_seq_length as the records are
        if kind == "ner":
            full, short = _ner_labels(full), _ner_labels(short)
        widths.add(int(short["token_ids"].shape[1]))
        assert full["token_ids"].shape[1] == 32
        want = task.per_example_loss(full, task.model(task.inputs(full), training=False)).numpy()
        got = task.per_example_loss(short, task.model(task.inputs(short), training=False)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert float(task.tokens_in(full)) == float(task.tokens_in(short))
    assert widths - {32}, widths  # some batches really were cut
