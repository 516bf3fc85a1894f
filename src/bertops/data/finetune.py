"""The ``finetune_data`` stage: tokenised classification and NER sets as TFRecords, with their label maps.

Classification: ``[CLS] text [SEP]`` (:func:`bertops.data.tokenizer.encode_texts`; a longer text keeps
``max_seq_length - 2`` word pieces by ``finetune_data.truncation``: ``head``, the first ones, or ``head_tail``,
a ``head_fraction`` share from the start and the rest from the end) and ``label`` = the index of the text's
label in the label map (and the model's output order): ``validate.labels`` when set, else every label of the
three splits, sorted (:func:`bertops.data.validate.resolve_labels`, the rule the data report records).
The manifest's ``tokenizer`` block holds every encoding setting (:class:`~bertops.data.tokenizer.EncodingSettings`);
training copies it into the model bundle, so serving encodes texts exactly as these records were.

NER: the words are tokenised as given (``is_pretokenized``), ``[CLS] pieces [SEP]``; ``labels`` holds the tag
index at the *first* word piece of each word and ``-100`` everywhere else (later pieces, special tokens,
padding), which the loss and the metrics ignore. A word truncated away loses its tag; words that produce no
piece at all (e.g. only control characters) cannot carry one either: both are counted in the manifest. The tag
map is ``O`` followed by the entity types' ``B-``/``I-`` tags in sorted order, over all splits.

Outputs: ``data/finetune/<task>/{train,validation,test}.tfrecord`` + ``manifest.json`` + ``label_map.json``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bertops.config import BertopsConfig
from bertops.data.errors import DataError
from bertops.data.io import atomic_dir, read_jsonl, write_json
from bertops.data.records import IGNORE_INDEX, make_manifest, serialize_examples
from bertops.data.tokenizer import EncodingSettings, encode_texts, file_sha256, special_ids
from bertops.data.validate import resolve_labels
from bertops.paths import LABEL_MAP, MANIFEST, SPLITS, DataLayout

log = logging.getLogger(__name__)


def encode_classification(
    tokenizer: Any,
    rows: list[dict[str, Any]],
    labels: list[str],
    max_seq_length: int,
    file: str,
    settings: EncodingSettings | None = None,
) -> dict[str, np.ndarray]:
    """Features of the ``classification`` record spec for JSONL rows ``{"text", "label"}``."""
    index = {label: i for i, label in enumerate(labels)}
    texts, y = [], []
    for row, rec in enumerate(rows, start=1):
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str):
            raise DataError("expected a string", file=file, row=row, field="text")
        if label not in index:
            raise DataError(
                f"label {label!r} is not one of the label map {labels}", file=file, row=row, field="label"
            )
        texts.append(text)
        y.append(index[label])
    settings = settings or EncodingSettings(max_seq_length=max_seq_length)
    features = encode_texts(tokenizer, texts, max_seq_length, settings.truncation, settings.head_fraction)
    features["label"] = np.asarray(y, dtype=np.int32).reshape(-1, 1)
    return features


def ner_label_map(tags: set[str], file: str = "<ner>") -> list[str]:
    """``O`` then each entity type's ``B-``/``I-`` tags, types sorted; a tag not in BIO form is an error."""
    types = set()
    for tag in tags:
        if tag == "O":
            continue
        prefix, _, kind = tag.partition("-")
        if prefix not in ("B", "I") or not kind:
            raise DataError(f"tag {tag!r} is not a BIO tag (O, B-<type>, I-<type>)", file=file, field="tags")
        types.add(kind)
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]


def align_words(
    tokenizer: Any, words: list[list[str]], max_seq_length: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """Model inputs of pre-tokenised sentences and, per position, the word whose *first* piece sits there.

    Returns ``(inputs, word_at, counts)``: ``inputs`` holds ``token_ids``/``segment_ids``/``padding_mask``
    (``[CLS] pieces [SEP]``, the first ``max_seq_length - 2`` pieces kept); ``word_at`` (n, S) is the word index
    at each word's first piece and ``-1`` everywhere else; ``counts`` are the alignment counts of the manifest.
    Training labels (:func:`encode_ner`) and evaluation (mapping predictions back to words) share this rule.
    """
    ids = special_ids(tokenizer)
    n, s = len(words), max_seq_length
    token_ids = np.full((n, s), ids.pad, dtype=np.int32)
    word_at = np.full((n, s), -1, dtype=np.int32)
    padding_mask = np.zeros((n, s), dtype=np.int32)
    counts = {
        "examples": n,
        "words": 0,
        "words_truncated": 0,
        "words_without_pieces": 0,
        "examples_truncated": 0,
    }
    encodings = tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False) if n else []
    for i, enc in enumerate(encodings):
        pieces, word_of = enc.ids[: s - 2], enc.word_ids[: s - 2]
        length = len(pieces)
        token_ids[i, 0] = ids.cls
        token_ids[i, 1 : length + 1] = pieces
        token_ids[i, length + 1] = ids.sep
        padding_mask[i, : length + 2] = 1
        previous = None
        labelled = set()
        for p, w in enumerate(word_of):
            if w is not None and w != previous:
                word_at[i, p + 1] = w
                labelled.add(w)
            previous = w
        all_words = {w for w in enc.word_ids if w is not None}
        counts["words"] += len(words[i])
        counts["words_without_pieces"] += len(words[i]) - len(all_words)
        counts["words_truncated"] += len(all_words - labelled)
        counts["examples_truncated"] += len(enc.ids) > s - 2
    inputs = {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, s), dtype=np.int32),
        "padding_mask": padding_mask,
    }
    return inputs, word_at, counts


def encode_ner(
    tokenizer: Any, rows: list[dict[str, Any]], label_map: list[str], max_seq_length: int, file: str
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Features of the ``ner`` record spec for JSONL rows ``{"tokens", "tags"}``, and alignment counts."""
    index = {tag: i for i, tag in enumerate(label_map)}
    words: list[list[str]] = []
    tags: list[list[int]] = []
    for row, rec in enumerate(rows, start=1):
        toks, tg = rec.get("tokens"), rec.get("tags")
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise DataError("expected a list of strings", file=file, row=row, field="tokens")
        if not isinstance(tg, list) or len(tg) != len(toks):
            raise DataError(f"expected {len(toks)} tags, one per token", file=file, row=row, field="tags")
        unknown = [t for t in tg if t not in index]
        if unknown:
            raise DataError(f"tag {unknown[0]!r} is not in the tag map", file=file, row=row, field="tags")
        words.append(toks)
        tags.append([index[t] for t in tg])

    features, word_at, counts = align_words(tokenizer, words, max_seq_length)
    labels = np.full(word_at.shape, IGNORE_INDEX, dtype=np.int32)
    for i, row_tags in enumerate(tags):
        first = word_at[i] >= 0
        labels[i, first] = np.asarray(row_tags, dtype=np.int32)[word_at[i, first]]
    features["labels"] = labels
    return features, counts


def run_finetune_data(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, Any]:
    """The stage: both tasks, all splits, written into ``data/finetune`` at once (or not at all)."""
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    vc, fc, s = cfg.vocab, cfg.finetune_data, cfg.finetune_data.max_seq_length
    settings = EncodingSettings(
        lowercase=vc.lowercase, strip_accents=vc.strip_accents, max_input_chars_per_word=vc.max_input_chars_per_word,
        max_seq_length=s, truncation=fc.truncation, head_fraction=fc.head_fraction,
        vocab_sha256=file_sha256(layout.vocab_file),
    )  # fmt: skip
    tokenizer = settings.tokenizer(layout.vocab_file)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)

    rows = {
        task: {split: list(read_jsonl(layout.split_file(task, split))) for split in SPLITS}
        for task in ("classification", "ner")
    }
    for task, by_split in rows.items():
        for split, recs in by_split.items():
            if not recs:
                raise DataError(
                    f"no {task} examples (split {split!r} is empty)", file=str(layout.split_file(task, split))
                )
    labels = resolve_labels(
        cfg.validate_data.labels, (r.get("label") for recs in rows["classification"].values() for r in recs)
    )
    all_tags = {t for recs in rows["ner"].values() for r in recs for t in (r.get("tags") or [])}
    tag_map = ner_label_map(all_tags, str(layout.split_file("ner", "train")))

    summary: dict[str, Any] = {}
    with atomic_dir(layout.finetune_dir) as tmp:
        for task, label_map in (("classification", labels), ("ner", tag_map)):
            out = tmp / task
            out.mkdir()
            # NER keeps the first pieces whatever finetune_data.truncation says (words must stay aligned).
            task_settings = settings if task == "classification" else replace(settings, truncation="head")
            files, counts, extra = {}, {}, {}
            for split in SPLITS:
                file = str(layout.split_file(task, split))
                if task == "classification":
                    features = encode_classification(tokenizer, rows[task][split], labels, s, file, settings)
                    extra[split] = {"at_max_length": int((features["padding_mask"][:, -1] == 1).sum())}
                else:
                    features, extra[split] = encode_ner(tokenizer, rows[task][split], label_map, s, file)
                (out / f"{split}.tfrecord").write_bytes(serialize_examples(features))
                files[split] = [f"{split}.tfrecord"]
                counts[split] = len(rows[task][split])
            manifest = make_manifest(
                task,
                max_seq_length=s,
                num_examples=counts,
                files=files,
                vocab_size=vocab_size,
                label_map=label_map,
                extra={
                    "tokenizer": {"vocab_file": layout.vocab_file.name, **task_settings.to_dict()},
                    "stats": extra,
                },
            )
            write_json(out / MANIFEST, manifest)
            write_json(out / LABEL_MAP, {"labels": label_map})
            summary[task] = {"num_examples": counts, "num_labels": len(label_map)}
            log.info(
                "%s: %s examples, %d labels -> %s",
                task,
                counts,
                len(label_map),
                layout.finetune_task_dir(task),
            )
    return summary
