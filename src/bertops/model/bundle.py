"""The model bundle: the one directory every later step (evaluation, registry, serving) passes around.

    <bundle>/model.keras     the Keras task model (bertops classes registered; keras.saving.load_model works)
    <bundle>/vocab.txt       the vocabulary it was trained with
    <bundle>/label_map.json  {"labels": [...]}   (classification / ner bundles)
    <bundle>/bertops.json    {"task", "max_seq_length", "lowercase", "strip_accents", "tokenizer": {...},
                              "model": {...}, "data_version", "source_run_id", ...}

``tokenizer`` holds every setting that shaped the training records (:class:`EncodingSettings`: casing,
accents, ``max_input_chars_per_word``, ``max_seq_length``, the truncation rule, the vocabulary's SHA-256).
Loading rebuilds the tokenizer from it, so evaluation, the pyfunc and serving encode text exactly as the
records were; a bundle whose settings contradict each other or its ``vocab.txt`` is refused.

Usage::

    save_bundle("artifacts/finetune/bundle", model, vocab_file="data/vocab/vocab.txt", task="classification",
                max_seq_length=128, labels=["negative", "positive"])
    bundle = load_bundle("artifacts/finetune/bundle")
    bundle.predict_proba(["a fine film"])       # (1, 2) float32, columns in label-map order

A bundle is written to a temporary sibling directory and renamed into place, so a failed save never leaves a
half-written bundle and never destroys the previous one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.data.tokenizer import EncodingSettings, VocabError, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    import keras
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.txt"
LABEL_MAP_FILE = "label_map.json"
META_FILE = "bertops.json"
FORMAT_VERSION = 1
TASKS = ("backbone", "pretraining", "classification", "ner")
LABELLED_TASKS = ("classification", "ner")
# Inference batches are cut to their longest row, rounded up to this multiple: no work on padding beyond it,
# and only a bounded number of distinct shapes for the compiled forward pass.
LENGTH_BUCKET = 16


class BundleError(ValueError):
    """A bundle directory that is incomplete or inconsistent; the message names the file and field."""


@dataclass
class Bundle:
    """A loaded bundle: the Keras model, its tokenizer, its labels and its metadata."""

    path: Path
    model: keras.Model
    tokenizer: Tokenizer
    labels: list[str] | None
    meta: dict[str, Any]
    settings: EncodingSettings = field(default_factory=EncodingSettings)
    _forward: Any = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def max_seq_length(self) -> int:
        return int(self.meta["max_seq_length"])

    def encode(self, texts: Sequence[str], trim: bool = True) -> dict[str, np.ndarray]:
        """Tokenise texts into model inputs; ``trim`` cuts trailing all-padding columns (bucketed)."""
        batch = self.settings.encode(self.tokenizer, list(texts))
        if trim and len(texts):
            return trim_padding(batch, LENGTH_BUCKET)
        return batch

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw float32 logits of the task model for raw texts, in batches."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        if self.task not in LABELLED_TASKS:
            raise BundleError(
                f"{self.path}: task {self.task!r} has no label logits (expected one of {LABELLED_TASKS})"
            )
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels or [])), dtype=np.float32)
        forward = self._compiled_forward()
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode(texts[start : start + batch_size])
            chunks.append(np.asarray(forward(batch)))
        return self._join(chunks, len(texts), self.max_seq_length)

    def forward(self, inputs: Mapping[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Raw float32 logits for already encoded inputs (``token_ids``, ``segment_ids``, ``padding_mask``,
        each ``(n, S)``), in batches with the padding trimmed: ``(n, num_labels)`` or, for NER, ``(n, S, num_labels)``.

        For inputs the tokenizer does not make from raw text, e.g. NER's pre-tokenised words
        (:func:`bertops.data.finetune.align_words`).
        """
        if self.task not in LABELLED_TASKS:
            raise BundleError(
                f"{self.path}: task {self.task!r} has no label logits (expected one of {LABELLED_TASKS})"
            )
        names = ("token_ids", "segment_ids", "padding_mask")
        batch_all = {k: np.asarray(inputs[k], dtype=np.int32) for k in names}
        n, width = batch_all["token_ids"].shape
        if n == 0:
            shape = (0, width, len(self.labels or [])) if self.task == "ner" else (0, len(self.labels or []))
            return np.zeros(shape, dtype=np.float32)
        forward = self._compiled_forward()
        chunks = []
        for start in range(0, n, batch_size):
            batch = trim_padding({k: v[start : start + batch_size] for k, v in batch_all.items()})
            chunks.append(np.asarray(forward(batch)))
        return self._join(chunks, n, width)

    def _join(self, chunks: list[np.ndarray], n: int, width: int) -> np.ndarray:
        if self.task == "ner":  # rows have different trimmed lengths: pad back to the full width
            out = np.zeros((n, width, chunks[0].shape[-1]), np.float32)
            row = 0
            for c in chunks:
                out[row : row + len(c), : c.shape[1]] = c
                row += len(c)
            return out
        return np.concatenate(chunks, axis=0)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities ``(n, num_labels)`` (classification) or ``(n, T, num_labels)`` (ner)."""
        z = self.logits(texts, batch_size)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def _compiled_forward(self) -> Any:
        if self._forward is None:
            import tensorflow as tf

            spec = {
                n: tf.TensorSpec((None, None), tf.int32, name=n)
                for n in ("token_ids", "segment_ids", "padding_mask")
            }
            model = self.model

            @tf.function(input_signature=[spec], reduce_retracing=True)
            def forward(inputs: dict[str, tf.Tensor]) -> tf.Tensor:
                return model(inputs, training=False)

            self._forward = forward
        return self._forward


def trim_padding(batch: dict[str, np.ndarray], multiple: int = LENGTH_BUCKET) -> dict[str, np.ndarray]:
    """Drop padding columns beyond the longest row (rounded up to ``multiple``, capped at the width)."""
    width = batch["padding_mask"].shape[1]
    longest = int(batch["padding_mask"].sum(axis=1).max()) if batch["padding_mask"].size else 0
    keep = min(width, max(multiple, -(-longest // multiple) * multiple))
    return {k: np.ascontiguousarray(v[:, :keep]) for k, v in batch.items()}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _architecture(model: keras.Model) -> dict[str, Any]:
    """The backbone config of a task model (or of a backbone), plus the task's own arguments."""
    from bertops.model.backbone import BertBackbone

    backbone = model if isinstance(model, BertBackbone) else getattr(model, "backbone", None)
    if backbone is None:
        raise BundleError(f"model {model.name!r} is neither a BertBackbone nor a bertops task with .backbone")
    arch = {k: v for k, v in backbone.get_config().items() if k not in ("name", "trainable")}
    if hasattr(model, "num_classes"):
        arch["num_classes"] = int(model.num_classes)
    arch["class_name"] = type(model).__name__
    return arch


def save_bundle(
    path: str | Path,
    model: keras.Model,
    vocab_file: str | Path,
    task: str,
    max_seq_length: int,
    labels: Sequence[str] | None = None,
    lowercase: bool = True,
    strip_accents: bool = True,
    data_version: str | None = None,
    source_run_id: str | None = None,
    extra: dict[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle directory atomically (temp sibling, then rename) and return its path.

    ``task`` is one of :data:`TASKS`; labelled tasks need ``labels`` matching the model's ``num_classes``.
    ``tokenizer`` is the records' encoding settings (the manifest's ``tokenizer`` block); it must agree with
    ``max_seq_length``, ``lowercase``, ``strip_accents`` and ``vocab_file``. Without it the defaults are stored.
    ``extra`` keys are merged into ``bertops.json`` (e.g. training metrics, the pretrain run id).
    """
    path = Path(path)
    if task not in TASKS:
        raise BundleError(f"task must be one of {TASKS}, got {task!r}")
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise BundleError(f"vocabulary file {vocab_file} does not exist")
    arch = _architecture(model)
    if task in LABELLED_TASKS:
        if not labels:
            raise BundleError(f"a {task} bundle needs its labels (label_map.json)")
        if arch.get("num_classes") != len(labels):
            raise BundleError(
                f"labels has {len(labels)} entries but the model has num_classes={arch.get('num_classes')}"
            )
    if max_seq_length > arch["max_sequence_length"]:
        raise BundleError(
            f"max_seq_length={max_seq_length} exceeds the model's max_sequence_length={arch['max_sequence_length']}"
        )
    settings = _settings_to_store(tokenizer, vocab_file, max_seq_length, lowercase, strip_accents)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "max_seq_length": int(max_seq_length),
        "lowercase": bool(lowercase),
        "strip_accents": bool(strip_accents),
        "tokenizer": settings.to_dict(),
        "model": arch,
        "data_version": data_version,
        "source_run_id": source_run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{time.time_ns()}"
    tmp.mkdir()
    try:
        model.save(tmp / MODEL_FILE)
        shutil.copyfile(vocab_file, tmp / VOCAB_FILE)
        if labels:
            _write_json(tmp / LABEL_MAP_FILE, {"labels": list(labels)})
        _write_json(tmp / META_FILE, meta)
        if path.exists():
            old = path.parent / f".{path.name}.old-{time.time_ns()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s bundle to %s (%s)", task, path, arch["class_name"])
    return path


def _settings_to_store(
    tokenizer: Mapping[str, Any] | None,
    vocab_file: Path,
    max_seq_length: int,
    lowercase: bool,
    strip_accents: bool,
) -> EncodingSettings:
    vocab_sha = file_sha256(vocab_file)
    if tokenizer is None:
        return EncodingSettings(
            lowercase=bool(lowercase), strip_accents=bool(strip_accents), max_seq_length=int(max_seq_length),
            vocab_sha256=vocab_sha,
        )  # fmt: skip
    try:
        settings = EncodingSettings.from_dict(tokenizer, "the records' tokenizer settings")
    except VocabError as exc:
        raise BundleError(str(exc)) from None
    given = EncodingSettings(
        **{**settings.to_dict(), "lowercase": bool(lowercase), "strip_accents": bool(strip_accents),
           "max_seq_length": int(max_seq_length), "vocab_sha256": vocab_sha}
    )  # fmt: skip
    _refuse_mismatch(settings, given, "the records' tokenizer settings", "this bundle", vocab_file)
    return given


def _refuse_mismatch(
    expected: EncodingSettings, actual: EncodingSettings, expected_name: str, actual_name: str, where: Path
) -> None:
    diff = expected.differences(actual)
    if diff:
        listed = "; ".join(f"{k}: {a!r} in {expected_name}, {b!r} in {actual_name}" for k, (a, b) in diff.items())
        raise BundleError(
            f"{where}: tokenizer settings do not match ({listed}); text would be encoded differently from the "
            "training records: rebuild the records (dvc repro) or the bundle with the same settings"
        )


def bundle_settings(path: str | Path, meta: Mapping[str, Any]) -> EncodingSettings:
    """The encoding settings of a bundle, checked against its top-level keys and its ``vocab.txt``.

    A bundle written before settings were stored (no ``tokenizer`` key) gets the defaults it was built with
    (``max_input_chars_per_word`` 100, ``head`` truncation)."""
    path = Path(path)
    top = EncodingSettings(
        lowercase=meta["lowercase"], strip_accents=meta["strip_accents"], max_seq_length=int(meta["max_seq_length"]),
        vocab_sha256=file_sha256(path / VOCAB_FILE) if (path / VOCAB_FILE).is_file() else None,
    )  # fmt: skip
    if "tokenizer" not in meta:
        logger.warning("%s: no stored tokenizer settings (an older bundle); using the defaults", path)
        return top
    try:
        stored = EncodingSettings.from_dict(meta["tokenizer"], str(path / META_FILE))
    except VocabError as exc:
        raise BundleError(str(exc)) from None
    check = EncodingSettings(**{**stored.to_dict(), **{k: getattr(top, k) for k in
                                ("lowercase", "strip_accents", "max_seq_length", "vocab_sha256")}})  # fmt: skip
    _refuse_mismatch(stored, check, f"{META_FILE} 'tokenizer'", f"its top-level keys / {VOCAB_FILE}", path)
    return stored


def read_meta(path: str | Path) -> dict[str, Any]:
    """``bertops.json`` of a bundle, checked for the keys every reader relies on."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a bertops bundle: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    for key in ("task", "max_seq_length", "lowercase", "strip_accents", "model"):
        if key not in meta:
            raise BundleError(f"{meta_path}: missing key {key!r}")
    if meta["task"] not in TASKS:
        raise BundleError(f"{meta_path}: task must be one of {TASKS}, got {meta['task']!r}")
    return meta


def read_labels(path: str | Path) -> list[str] | None:
    """The labels of ``label_map.json`` in a bundle, or None when the bundle has none."""
    label_path = Path(path) / LABEL_MAP_FILE
    if not label_path.is_file():
        return None
    try:
        labels = json.loads(label_path.read_text(encoding="utf-8"))["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f'{label_path}: expected {{"labels": [...]}} ({exc})') from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{label_path}: 'labels' must be a list of strings")
    return labels


def load_bundle(path: str | Path, compile: bool = False) -> Bundle:
    """Load a bundle: model (``keras.saving.load_model``), tokenizer, labels and metadata, all checked."""
    import keras

    import bertops.model.heads  # noqa: F401  (registers the bertops classes for deserialisation)
    path = Path(path)
    meta = read_meta(path)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (path / name).is_file():
            raise BundleError(f"bundle {path} is missing {name}")
    labels = read_labels(path)
    if meta["task"] in LABELLED_TASKS and labels is None:
        raise BundleError(f"bundle {path} is a {meta['task']} bundle but {LABEL_MAP_FILE} is missing")
    model = keras.saving.load_model(path / MODEL_FILE, compile=compile)
    num_classes = getattr(model, "num_classes", None)
    if labels is not None and num_classes is not None and num_classes != len(labels):
        raise BundleError(
            f"{path / LABEL_MAP_FILE} lists {len(labels)} labels but {MODEL_FILE} has num_classes={num_classes}"
        )
    settings = bundle_settings(path, meta)
    tokenizer = settings.tokenizer(path / VOCAB_FILE)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)
    expected = meta["model"].get("vocabulary_size")
    if expected is not None and vocab_size > expected:
        raise BundleError(
            f"{path / VOCAB_FILE} has {vocab_size} tokens but the model's vocabulary_size is {expected}"
        )
    return Bundle(path=path, model=model, tokenizer=tokenizer, labels=labels, meta=meta, settings=settings)
