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
   :class:`~bertops.evaluation.errors.LabelMapMismatch` naming the file, row, field and tag);
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

from bertops.evaluation.artifacts import write_ner_artifacts
from bertops.evaluation.errors import EvaluationError, LabelMapMismatch
from bertops.evaluation.latency import measure_latency
from bertops.evaluation.metrics import ner_metrics
from bertops.evaluation.result import MODEL_URI_SCHEMES, EvaluationResult, connect_tracking, publish
from bertops.model.entities import OUTSIDE, tag_words

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig
    from bertops.model.bundle import Bundle

logger = logging.getLogger(__name__)
BASELINE_F1 = "all_o_entity_f1"  # entity micro-F1 of always answering O (no entity found: 0)
BASELINE_TOKEN_ACCURACY = "all_o_token_accuracy"  # the share of O words


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
    and the alignment counts of :func:`bertops.data.finetune.align_words` (:func:`bertops.model.entities.tag_words`:
    the served model's rule)."""
    tags, _, counts = tag_words(bundle, tokens, batch_size)
    return tags, counts


def load_ner_bundle(source: str | Path, workdir: Path) -> Bundle:
    """The NER bundle of a bundle directory or of a logged MLflow model (downloaded into ``workdir``, the
    bundle it carries loaded: the weights the pyfunc serves); anything else is an :class:`EvaluationError`."""
    from bertops.model.bundle import META_FILE, BundleError, load_bundle

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(workdir)))
        metas = sorted(local.rglob(META_FILE))
        if not metas:
            raise EvaluationError(f"{text}: the MLflow model holds no bertops bundle ({META_FILE} not found)")
        directory = metas[0].parent
    elif Path(text).is_dir():
        directory = Path(text)
    else:
        raise EvaluationError(f"NER model {text!r} is neither a bundle directory nor an MLflow model URI")
    try:
        bundle = load_bundle(directory)
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
    from bertops.model.bundle import LABEL_MAP_FILE

    connect_tracking(tracking_uri)  # an unreachable server fails here, before any work or output
    test = read_ner_test_set(test_file)
    with tempfile.TemporaryDirectory(prefix="bertops-eval-ner-model-") as tmp:
        bundle = load_ner_bundle(source, Path(tmp))
    labels = list(bundle.labels or [])
    types = entity_types(labels, f"{source} ({LABEL_MAP_FILE})")
    check_tags(test, labels, str(source))

    pred, counts = predict_tags(bundle, test.tokens, batch_size)
    metrics = ner_metrics(test.tags, pred)
    metrics["words_truncated"] = float(counts["words_truncated"])
    metrics["words_without_pieces"] = float(counts["words_without_pieces"])
    # The all-O baseline (a model that never finds an entity), measured the same way: the gate's floor.
    baseline = ner_metrics(test.tags, [[OUTSIDE] * len(t) for t in test.tokens])
    metrics[BASELINE_F1] = baseline["entity_f1"]
    metrics[BASELINE_TOKEN_ACCURACY] = baseline["token_accuracy"]
    metrics.update(
        measure_latency(
            lambda batch: predict_tags(bundle, batch, batch_size), test.tokens, (1, 32), cfg.latency_repeats
        )
    )
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
            task="ner",
        )
    return EvaluationResult(str(source), metrics, labels, run_id, final_dir, test.sha256, task="ner")
