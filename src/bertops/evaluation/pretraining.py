"""Evaluate a pretraining bundle (``BertPretrainer``) on the held-out pretraining records: masked LM and NSP.

    result = evaluate_pretraining("artifacts/pretrain", "data/pretrain/manifest.json", cfg.evaluation,
                                  split="heldout", max_batches=50, output_dir="artifacts/evaluation-pretraining")
    result.metrics["mlm_accuracy"], result.metrics["perplexity"], result.metrics["nsp_accuracy"]

The records are read with the data step's reader and the training loop's evaluation input
(:func:`bertops.training.datasets.eval_dataset`: the split in file order, batched, the first ``max_batches``
batches when given), and each batch is summed by the pretraining task's own ``eval_sums``
(:class:`bertops.training.tasks.PretrainingTask`), so these metrics are the ones training reports for its
held-out split. Metrics: ``mlm_accuracy`` and ``mlm_loss`` over the real masked positions (weight 1; padding
predictions have weight 0), ``perplexity = exp(mlm_loss)``, ``nsp_accuracy``, ``nsp_loss``, ``num_examples``,
``num_masked_tokens``.

Records that do not fit the model are an :class:`~bertops.evaluation.errors.EvaluationError` naming the manifest
and field, before any output is touched: a manifest of another ``kind``, a ``max_seq_length`` (or
``feature_spec`` width) other than the bundle's, a ``vocab_size`` other than the model's, a missing feature, an
empty split, and token ids outside the model's vocabulary.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.evaluation.errors import EvaluationError
from bertops.evaluation.result import MODEL_URI_SCHEMES, EvaluationResult, connect_tracking, publish

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig
    from bertops.model.bundle import Bundle

logger = logging.getLogger(__name__)
REQUIRED_FEATURES = (
    "token_ids",
    "segment_ids",
    "padding_mask",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_label",
)


def manifest_path(test_data: str | Path) -> Path:
    """``manifest.json`` itself, or a directory holding one (``data/pretrain``)."""
    from bertops.paths import MANIFEST

    path = Path(test_data)
    return path / MANIFEST if path.is_dir() else path


def load_records(test_data: str | Path, split: str) -> tuple[Path, dict[str, Any], list[str]]:
    """The manifest path, the manifest and the record files of ``split``, each checked: errors name the file."""
    from bertops.data.records import load_manifest, split_files

    path = manifest_path(test_data)
    try:
        manifest = load_manifest(path)
        files = split_files(path, split)
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluationError(str(exc)) from None
    except KeyError as exc:
        raise EvaluationError(str(exc.args[0]) if exc.args else str(exc)) from None
    if manifest["kind"] != "pretraining":
        raise EvaluationError(
            f"{path}, field 'kind': {manifest['kind']!r} records, expected 'pretraining' (the held-out MLM/NSP "
            "records, e.g. data/pretrain/manifest.json)"
        )
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise EvaluationError(
            f"{path}, field 'files': split {split!r} has no record files (missing: {missing})"
        )
    if int(manifest["num_examples"].get(split, 0)) <= 0:
        raise EvaluationError(f"{path}, field 'num_examples': split {split!r} has no examples")
    return path, manifest, files


def check_fit(manifest: dict[str, Any], path: Path, bundle: Bundle) -> None:
    """Records made for another model (sequence length, vocabulary, features) fail here, naming the field."""
    spec = manifest["feature_spec"]
    absent = [name for name in REQUIRED_FEATURES if name not in spec]
    if absent:
        raise EvaluationError(f"{path}, field 'feature_spec': lacks the pretraining features {absent}")
    s_model = bundle.max_seq_length
    s_records = int(manifest["max_seq_length"])
    if s_records != s_model:
        raise EvaluationError(
            f"{path}, field 'max_seq_length': the records have max_seq_length={s_records} but the model "
            f"{bundle.path} was trained with max_seq_length={s_model}; rebuild the records or evaluate the "
            "matching model"
        )
    for name in ("token_ids", "segment_ids", "padding_mask"):
        if list(spec[name]["shape"]) != [s_model]:
            raise EvaluationError(
                f"{path}, field 'feature_spec.{name}.shape': {spec[name]['shape']}, expected [{s_model}]"
            )
    v_model = bundle.meta["model"].get("vocabulary_size")
    v_records = manifest.get("vocab_size")
    if v_records is None:
        raise EvaluationError(f"{path}: manifest lacks the key 'vocab_size'")
    if v_model is not None and int(v_records) != int(v_model):
        raise EvaluationError(
            f"{path}, field 'vocab_size': the records were made with a vocabulary of {v_records} tokens but "
            f"the model {bundle.path} has vocabulary_size={v_model}; they use different vocabularies"
        )


def _check_batch(batch: dict[str, Any], vocab_size: int, seq: int, files: list[str]) -> None:
    for name, limit in (
        ("token_ids", vocab_size),
        ("masked_lm_ids", vocab_size),
        ("masked_lm_positions", seq),
    ):
        values = batch[name].numpy()
        if values.size and (values.min() < 0 or values.max() >= limit):
            raise EvaluationError(
                f"{', '.join(files)}, feature {name!r}: values in [{values.min()}, {values.max()}] lie outside "
                f"[0, {limit}) of the model"
            )


def _sha256(path: Path, files: list[str]) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def load_pretraining_bundle(source: str | Path) -> Bundle:
    from bertops.model.bundle import BundleError, load_bundle

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES) or not Path(text).is_dir():
        raise EvaluationError(f"pretraining model {text!r} is not a bundle directory")
    try:
        bundle = load_bundle(text)
    except BundleError as exc:
        raise EvaluationError(str(exc)) from None
    if bundle.task != "pretraining":
        raise EvaluationError(
            f"{text}: a {bundle.task!r} bundle cannot be evaluated on masked-LM records (task 'pretraining' needed)"
        )
    return bundle


def pretraining_metrics(
    bundle: Bundle, manifest: dict[str, Any], files: list[str], batch_size: int, max_batches: int | None
) -> dict[str, float]:
    """Masked-LM and NSP metrics of the bundle's model over the records, summed exactly over batches."""
    import tensorflow as tf

    from bertops.evaluation.metrics import masked_lm_from_sums
    from bertops.training.datasets import eval_dataset
    from bertops.training.tasks import PretrainingTask

    task = PretrainingTask(bundle.model)

    @tf.function(reduce_retracing=True)
    def sums_of(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return task.eval_sums(batch, bundle.model(task.inputs(batch), training=False))

    vocab_size = int(bundle.meta["model"].get("vocabulary_size") or bundle.tokenizer.get_vocab_size())
    total: dict[str, float] = {}
    for batch in eval_dataset(files, manifest, batch_size=batch_size, max_batches=max_batches):
        _check_batch(batch, vocab_size, bundle.max_seq_length, files)
        for key, value in sums_of(batch).items():
            total[key] = total.get(key, 0.0) + float(value)
    if not total.get("examples"):
        raise EvaluationError(f"{', '.join(files)}: no records were read")
    if not total.get("mlm_count"):
        raise EvaluationError(f"{', '.join(files)}: no masked-LM predictions with a non-zero weight")
    metrics = masked_lm_from_sums(total["mlm_ce"], total["mlm_correct"], total["mlm_count"])
    metrics.update(
        nsp_accuracy=total["nsp_correct"] / total["examples"],
        nsp_loss=total["nsp_ce"] / total["examples"],
        num_examples=total["examples"],
        num_masked_tokens=total["mlm_count"],
    )
    return metrics


def evaluate_pretraining(
    source: str | Path,
    test_data: str | Path,
    cfg: EvaluationConfig | None = None,
    *,
    split: str = "heldout",
    max_batches: int | None = None,
    batch_size: int = 32,
    output_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "bertops-evaluation",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> EvaluationResult:
    """Evaluate the pretraining bundle ``source`` on ``split`` of the records at ``test_data`` (a manifest or
    its directory); DVC files to ``output_dir`` and an MLflow run when given. ``cfg`` is accepted for a
    uniform signature (no setting of it applies)."""
    from bertops.evaluation.artifacts import write_summary_artifacts

    if max_batches is not None and max_batches < 1:
        raise EvaluationError(f"max_batches must be at least 1, got {max_batches}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    connect_tracking(tracking_uri)  # an unreachable server fails here, before any work or output
    path, manifest, files = load_records(test_data, split)
    bundle = load_pretraining_bundle(source)
    check_fit(manifest, path, bundle)
    metrics = pretraining_metrics(bundle, manifest, files, batch_size, max_batches)
    logger.info(
        "evaluated %s on %s split %s (%d examples): mlm_accuracy=%.4f perplexity=%.3f nsp_accuracy=%.4f",
        source,
        path,
        split,
        int(metrics["num_examples"]),
        metrics["mlm_accuracy"],
        metrics["perplexity"],
        metrics["nsp_accuracy"],
    )
    sha = _sha256(path, files)
    with tempfile.TemporaryDirectory(prefix="bertops-eval-pretrain-") as tmp:
        art_dir = Path(tmp)
        write_summary_artifacts(art_dir, metrics, "Pretraining evaluation metrics")
        params: dict[str, Any] = {
            "model": str(source),
            "task": "pretraining",
            "test_file": str(path),
            "split": split,
            "num_examples": int(metrics["num_examples"]),
            "max_batches": "all" if max_batches is None else max_batches,
            "batch_size": batch_size,
            "max_seq_length": bundle.max_seq_length,
        }
        run_id, final_dir = publish(
            art_dir,
            metrics,
            source=str(source),
            test_sha256=sha,
            params=params,
            output_dir=output_dir,
            tracking_uri=tracking_uri,
            experiment=experiment,
            run_name=run_name,
            tags=tags,
            task="pretraining",
        )
    return EvaluationResult(str(source), metrics, [], run_id, final_dir, sha, task="pretraining")
