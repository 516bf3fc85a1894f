"""What differs between pretraining, classification and NER: the model head, the loss, the metrics.

Each task gives the training loop three things:

- ``model``: the Keras task model (built under the strategy's scope by the caller),
- ``per_example_loss(batch, outputs) -> (B,)``: the loss of each example, for
  ``tf.nn.compute_average_loss(..., global_batch_size)``,
- ``eval_sums(batch, outputs) -> {name: scalar}``: sums over a batch that :meth:`Task.finalize` turns into
  metrics (so that metrics over a split are exact, not means of batch means).

Losses and metrics are computed in float32 (the heads emit float32 logits whatever the dtype policy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from bertops.data.records import IGNORE_INDEX
from bertops.training.datasets import LABELLED_TOKENS_PER_EXAMPLE, labelled_tokens_per_example

MODEL_INPUTS = ("token_ids", "segment_ids", "padding_mask")


@dataclass
class Task:
    """Base class: one training objective on a task model."""

    model: keras.Model
    # The validation metric that early stopping and "best" follow, and whether higher is better.
    monitor: str = "loss"
    monitor_mode: str = "min"
    input_names: tuple[str, ...] = MODEL_INPUTS

    def inputs(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {k: batch[k] for k in self.input_names}

    def per_example_loss(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> tf.Tensor:
        raise NotImplementedError

    def eval_sums(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def tokens_in(self, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Real (non-padding) tokens of a batch: the throughput unit."""
        return tf.reduce_sum(tf.cast(batch["padding_mask"], tf.int64))

    def unused_variables(self) -> list[Any]:
        """Trainable variables with no path to this task's loss (they get no gradient and are not updated)."""
        return []

    def trained_variables(self) -> list[Any]:
        """The variables the loop differentiates and updates: the model's trainable ones less the unused."""
        unused = {id(v) for v in self.unused_variables()}
        return [v for v in self.model.trainable_variables if id(v) not in unused]


def _ce(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))


@dataclass
class PretrainingTask(Task):
    """Masked LM + next-sentence prediction (``BertPretrainer``). Loss = mean MLM CE over the real
    predictions of an example + NSP CE. Metrics: MLM accuracy, perplexity (exp of the MLM CE per masked
    token), NSP accuracy."""

    monitor: str = "mlm_loss"
    monitor_mode: str = "min"
    input_names: tuple[str, ...] = (*MODEL_INPUTS, "masked_lm_positions")

    def per_example_loss(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> tf.Tensor:
        weights = tf.cast(batch["masked_lm_weights"], tf.float32)  # (B, P); 0 on padding predictions
        mlm = _ce(batch["masked_lm_ids"], outputs["mlm_logits"])  # (B, P)
        mlm = tf.reduce_sum(mlm * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        nsp = _ce(batch["next_sentence_label"][:, 0], outputs["nsp_logits"])  # (B,)
        return mlm + nsp

    def eval_sums(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> dict[str, tf.Tensor]:
        weights = tf.cast(batch["masked_lm_weights"], tf.float32)
        mlm_logits, nsp_logits = outputs["mlm_logits"], outputs["nsp_logits"]
        mlm_ce = _ce(batch["masked_lm_ids"], mlm_logits)
        mlm_hit = tf.cast(
            tf.equal(tf.argmax(mlm_logits, -1, output_type=tf.int32), batch["masked_lm_ids"]), tf.float32
        )
        nsp_labels = batch["next_sentence_label"][:, 0]
        nsp_hit = tf.cast(tf.equal(tf.argmax(nsp_logits, -1, output_type=tf.int32), nsp_labels), tf.float32)
        return {
            "mlm_ce": tf.reduce_sum(mlm_ce * weights),
            "mlm_correct": tf.reduce_sum(mlm_hit * weights),
            "mlm_count": tf.reduce_sum(weights),
            "nsp_ce": tf.reduce_sum(_ce(nsp_labels, nsp_logits)),
            "nsp_correct": tf.reduce_sum(nsp_hit),
            "examples": tf.cast(tf.shape(nsp_labels)[0], tf.float32),
        }

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        mlm_loss = sums["mlm_ce"] / max(sums["mlm_count"], 1.0)
        nsp_loss = sums["nsp_ce"] / max(sums["examples"], 1.0)
        return {
            "mlm_loss": mlm_loss,
            "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0),
            "perplexity": math.exp(min(mlm_loss, 50.0)),
            "nsp_loss": nsp_loss,
            "nsp_accuracy": sums["nsp_correct"] / max(sums["examples"], 1.0),
            "loss": mlm_loss + nsp_loss,
        }


@dataclass
class ClassificationTask(Task):
    """Sequence classification (``BertClassifier``): weighted softmax CE. Metrics: accuracy, macro F1, loss."""

    class_weights: Sequence[float] | None = None
    num_classes: int = 2
    monitor: str = "accuracy"
    monitor_mode: str = "max"
    _weights: tf.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            self._weights = tf.constant(list(self.class_weights), tf.float32)

    def per_example_loss(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> tf.Tensor:
        labels = batch["label"][:, 0]
        loss = _ce(labels, outputs)
        if self._weights is not None:
            loss = loss * tf.gather(self._weights, labels)
        return loss

    def eval_sums(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> dict[str, tf.Tensor]:
        labels = batch["label"][:, 0]
        pred = tf.argmax(outputs, -1, output_type=tf.int32)
        sums = {
            "ce": tf.reduce_sum(_ce(labels, outputs)),
            "correct": tf.reduce_sum(tf.cast(tf.equal(pred, labels), tf.float32)),
            "examples": tf.cast(tf.shape(labels)[0], tf.float32),
        }
        for c in range(self.num_classes):
            is_pred, is_true = tf.equal(pred, c), tf.equal(labels, c)
            sums[f"tp_{c}"] = tf.reduce_sum(tf.cast(is_pred & is_true, tf.float32))
            sums[f"pred_{c}"] = tf.reduce_sum(tf.cast(is_pred, tf.float32))
            sums[f"true_{c}"] = tf.reduce_sum(tf.cast(is_true, tf.float32))
        return sums

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        f1s = []
        for c in range(self.num_classes):
            tp, p, t = sums[f"tp_{c}"], sums[f"pred_{c}"], sums[f"true_{c}"]
            f1s.append(2 * tp / (p + t) if p + t else 0.0)
        n = max(sums["examples"], 1.0)
        return {"loss": sums["ce"] / n, "accuracy": sums["correct"] / n, "macro_f1": sum(f1s) / len(f1s)}


@dataclass
class NerTask(Task):
    """Token classification (``BertTokenClassifier``): CE at each word's first piece (label != -100).

    Metrics: token accuracy over labelled tokens, and entity-token micro F1 (precision/recall over tokens
    whose predicted or gold tag is not ``outside_index``)."""

    class_weights: Sequence[float] | None = None
    outside_index: int = 0
    monitor: str = "entity_f1"
    monitor_mode: str = "max"
    _weights: tf.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            self._weights = tf.constant(list(self.class_weights), tf.float32)

    def unused_variables(self) -> list[Any]:
        # The head reads ``sequence_output`` only: the backbone's pooler ([CLS] dense + tanh) is computed but
        # never reaches the loss. Its weights stay as initialised/imported, so the bundle still holds them.
        return list(self.model.backbone.pooled_dense.trainable_variables)

    def per_example_loss(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> tf.Tensor:
        labels = batch["labels"]
        mask = tf.cast(labels != IGNORE_INDEX, tf.float32)
        safe = tf.where(labels == IGNORE_INDEX, 0, labels)
        ce = _ce(safe, outputs) * mask  # (B, T)
        if self._weights is not None:
            ce = ce * tf.gather(self._weights, safe)
        # Token-weighted, as Hugging Face's token classification averages: every labelled word of the global
        # batch counts the same, whatever its sentence's length. The loop averages per-example values over the
        # global batch, so each example's CE sum is divided by the global batch's labelled tokens per example
        # (set by the training input on every row; else this batch's own).
        per_example = batch.get(LABELLED_TOKENS_PER_EXAMPLE)
        if per_example is None:
            per_example = labelled_tokens_per_example(labels)
        return tf.reduce_sum(ce, axis=1) / tf.maximum(per_example, 1e-6)

    def eval_sums(self, batch: Mapping[str, tf.Tensor], outputs: Any) -> dict[str, tf.Tensor]:
        labels = batch["labels"]
        valid = labels != IGNORE_INDEX
        mask = tf.cast(valid, tf.float32)
        safe = tf.where(valid, labels, 0)
        pred = tf.argmax(outputs, -1, output_type=tf.int32)
        hit = tf.equal(pred, safe) & valid
        pred_entity = (pred != self.outside_index) & valid
        gold_entity = (safe != self.outside_index) & valid
        return {
            "ce": tf.reduce_sum(_ce(safe, outputs) * mask),
            "tokens": tf.reduce_sum(mask),
            "correct": tf.reduce_sum(tf.cast(hit, tf.float32)),
            "entity_tp": tf.reduce_sum(tf.cast(hit & gold_entity, tf.float32)),
            "entity_pred": tf.reduce_sum(tf.cast(pred_entity, tf.float32)),
            "entity_gold": tf.reduce_sum(tf.cast(gold_entity, tf.float32)),
        }

    def finalize(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = max(sums["tokens"], 1.0)
        p = sums["entity_tp"] / sums["entity_pred"] if sums["entity_pred"] else 0.0
        r = sums["entity_tp"] / sums["entity_gold"] if sums["entity_gold"] else 0.0
        return {
            "loss": sums["ce"] / n,
            "token_accuracy": sums["correct"] / n,
            "entity_precision": p,
            "entity_recall": r,
            "entity_f1": 2 * p * r / (p + r) if p + r else 0.0,
        }


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """scikit-learn's "balanced" weights: ``n / (k * count_c)``; a class absent from training gets 1."""
    total, k = sum(counts), len(counts)
    return [total / (k * c) if c else 1.0 for c in counts]
