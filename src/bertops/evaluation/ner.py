"""Evaluate a token-classification (NER) bundle on the held-out test split, at the level of words and entities.

    result = evaluate_ner("artifacts/finetune-ner", "data/split/ner/test.jsonl", cfg.evaluation,
                          output_dir="artifacts/evaluation-ner", tracking_uri=cfg.tracking_uri())
    result.metrics["entity_f1"], result.metrics["f1_PER"], result.metrics["token_accuracy"]

The test data is the split JSONL of the data stage (``{"tokens": [str], "tags": [str]}`` a line, BIO tags): it
keeps the words, so predictions map back to them. The words are tokenised with the bundle's own tokenizer by the
same rule that made the training records (:func:`bertops.data.finetune.align_words`): the *first* word piece of
each word carries the word's tag, as in BERT. A word the model never sees (truncated beyond the bundle's
``max_seq_length``, or a word that yields no word piece) is predicted ``O``, so its entities count as missed;
``words_truncated`` and ``words_without_pieces`` say how many there were.

Metrics (:func:`bertops.evaluation.metrics.ner_metrics`): entity-level micro ``entity_precision``,
``entity_recall``, ``entity_f1`` by exact span and type match (conlleval rules), per type ``precision_<type>``,
``recall_<type>``, ``f1_<type>``, ``support_<type>``, and ``token_accuracy`` over all words. In order, failing
before any output is touched:

1. reads the test JSONL and checks every tag is in the model's label map (a tag the model does not know is a
   :class:`~bertops.registry.errors.LabelMapMismatch` naming the file, row, field and tag);
2. predicts a tag per word, batched, through the bundle's compiled forward pass;
3. writes the reviewer files (:func:`bertops.evaluation.artifacts.write_ner_artifacts`) into ``output_dir``
   atomically and logs metrics, files and tags on one MLflow run of the evaluation experiment.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.evaluation.evaluate import MODEL_URI_SCHEMES, EvaluationResult, publish
from bertops.registry.errors import EvaluationError, LabelMapMismatch

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig
    from bertops.model.bundle import Bundle

logger = logging.getLogger(__name__)
OUTSIDE = "O"


@dataclass(frozen=True)
class NerTestSet:
    path: Path
    tokens: list[list[str]]
    tags: list[list[str]]
    sha256: str


def read_ner_test_set(path: str | Path) -> NerTestSet:
    """Words and BIO tags of an NER split JSONL; a bad row raises ``DataError`` naming file, row and field."""
    from bertops.data.errors import DataError
    from bertops.data.io import read_jsonl

    path = Path(path)
    if path.suffix != ".jsonl":
        raise EvaluationError(
            f"{path}: NER evaluation reads the split JSONL ({{'tokens', 'tags'}} a line, e.g. "
            "data/split/ner/test.jsonl), not records"
        )
    tokens, tags = [], []
    for row, rec in enumerate(read_jsonl(path), start=1):
        words, tg = rec.get("tokens"), rec.get("tags")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError("expected a list of strings", file=str(path), row=row, field="tokens")
        if not isinstance(tg, list) or not all(isinstance(t, str) for t in tg) or len(tg) != len(words):
            raise DataError(
                f"expected {len(words)} string tags, one per token", file=str(path), row=row, field="tags"
            )
        tokens.append(words)
        tags.append(tg)
    if not tokens or not any(tokens):
        raise EvaluationError(f"{path}: the test set holds no tagged words")
    return NerTestSet(path, tokens, tags, hashlib.sha256(path.read_bytes()).hexdigest())


def entity_types(labels: Sequence[str], label_file: str | Path) -> list[str]:
    """The entity types of a BIO label map (``O``, ``B-X``, ``I-X``), in label-map order; else an error."""
    if OUTSIDE not in labels:
        raise EvaluationError(f"{label_file}: the label map {list(labels)} has no {OUTSIDE!r} tag (not BIO)")
    types: list[str] = []
    for tag in labels:
        if tag == OUTSIDE:
            continue
        prefix, _, kind = tag.partition("-")
        if prefix not in ("B", "I") or not kind:
            raise EvaluationError(
                f"{label_file}: label {tag!r} is not a BIO tag (O, B-<type>, I-<type>); "
                "this is not a token-classification label map"
            )
        if kind not in types:
            types.append(kind)
    return types


def check_tags(test: NerTestSet, model_labels: Sequence[str], source: str) -> None:
    """Every test tag must be in the model's label map; the first one that is not names file, row and word."""
    known = set(model_labels)
    for row, tags in enumerate(test.tags, start=1):
        for word, tag in enumerate(tags, start=1):
            if tag not in known:
                raise LabelMapMismatch(
                    f"{test.path}, row {row}, field 'tags': tag {tag!r} (word {word}) is not in the label map "
                    f"{list(model_labels)} of model {source}; the test set and the model use different tag sets"
                )


def predict_tags(
    bundle: Bundle, tokens: Sequence[Sequence[str]], batch_size: int = 64
) -> tuple[list[list[str]], dict[str, int]]:
    """One predicted tag per word (argmax at the word's first piece; ``O`` for words the model never sees),
    and the alignment counts of :func:`bertops.data.finetune.align_words`."""
    from bertops.data.finetune import align_words

    labels = bundle.labels or []
    inputs, word_at, counts = align_words(bundle.tokenizer, [list(t) for t in tokens], bundle.max_seq_length)
    pred_ids = bundle.forward(inputs, batch_size).argmax(axis=-1)  # (n, S)
    out = []
    for i, words in enumerate(tokens):
        tags = [OUTSIDE] * len(words)
        positions = np.flatnonzero(word_at[i] >= 0)
        for p in positions:
            tags[word_at[i, p]] = labels[pred_ids[i, p]]
        out.append(tags)
    return out, counts


def load_ner_bundle(source: str | Path) -> Bundle:
    """A bundle directory holding an ``ner`` model; anything else is an :class:`EvaluationError`."""
    from bertops.model.bundle import BundleError, load_bundle

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        raise EvaluationError(
            f"{text}: NER evaluation takes a bundle directory (MLflow models are logged for classifiers only)"
        )
    if not Path(text).is_dir():
        raise EvaluationError(f"NER model {text!r} is not a bundle directory")
    try:
        bundle = load_bundle(text)
    except BundleError as exc:
        raise EvaluationError(str(exc)) from None
    if bundle.task != "ner" or not bundle.labels:
        raise EvaluationError(f"{text}: a {bundle.task!r} bundle cannot be evaluated as a token classifier")
    return bundle


def evaluate_ner(
    source: str | Path,
    test_file: str | Path,
    cfg: EvaluationConfig,
    *,
    output_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "bertops-evaluation",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    batch_size: int = 64,
) -> EvaluationResult:
    """Evaluate the NER bundle ``source`` on ``test_file``; DVC files to ``output_dir``, MLflow when given."""
    from bertops.evaluation.artifacts import write_ner_artifacts
    from bertops.evaluation.metrics import ner_metrics
    from bertops.model.bundle import LABEL_MAP_FILE

    if tracking_uri is not None:
        from bertops.registry.client import connect

        connect(tracking_uri)  # an unreachable server fails here, before any work or output
    test = read_ner_test_set(test_file)
    bundle = load_ner_bundle(source)
    labels = list(bundle.labels or [])
    types = entity_types(labels, Path(source) / LABEL_MAP_FILE)
    check_tags(test, labels, str(source))

    pred, counts = predict_tags(bundle, test.tokens, batch_size)
    metrics = ner_metrics(test.tags, pred)
    metrics["words_truncated"] = float(counts["words_truncated"])
    metrics["words_without_pieces"] = float(counts["words_without_pieces"])
    logger.info(
        "evaluated %s on %s (%d sentences, %d words): entity_f1=%.4f token_accuracy=%.4f",
        source,
        test.path,
        len(test.tokens),
        int(metrics["num_tokens"]),
        metrics["entity_f1"],
        metrics["token_accuracy"],
    )
    if counts["words_truncated"]:
        logger.warning(
            "%d test words lie beyond max_seq_length=%d and count as predicted O",
            counts["words_truncated"],
            bundle.max_seq_length,
        )
    with tempfile.TemporaryDirectory(prefix="bertops-eval-ner-") as tmp:
        art_dir = Path(tmp)
        write_ner_artifacts(art_dir, test.tokens, test.tags, pred, metrics, types, cfg.worst_examples)
        params: dict[str, Any] = {
            "model": str(source),
            "task": "ner",
            "test_file": str(test.path),
            "num_examples": len(test.tokens),
            "labels": ",".join(labels),
            "max_seq_length": bundle.max_seq_length,
        }
        run_id, final_dir = publish(
            art_dir,
            metrics,
            source=str(source),
            test_sha256=test.sha256,
            params=params,
            output_dir=output_dir,
            tracking_uri=tracking_uri,
            experiment=experiment,
            run_name=run_name,
            tags=tags,
        )
    return EvaluationResult(str(source), metrics, labels, run_id, final_dir, test.sha256, task="ner")
