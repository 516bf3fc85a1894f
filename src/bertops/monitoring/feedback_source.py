"""Feedback-labelled requests as training data: the served texts that got a true label, as JSONL sources.

    export_for_retrain(cfg, root)   # bert_retrain does this first: the retrained model's feedback only

Joins the feedback rows with the records on ``(request_id, index)`` (only records that kept their text:
``monitoring.store_text: true``), keeps the latest label of each text (by normalised text: the same text served
twice is one example), and writes, in the records' order, atomically:

- ``classification.jsonl``: ``{"text", "label", "request_id", "index"}`` a line (a classifier's feedback);
- ``ner.jsonl``: ``{"tokens", "tags", "request_id", "index"}`` (an NER model's ``entities``, character offsets
  turned into one BIO tag per word, the words split as :func:`bertops.model.entities.split_words` splits them).

A task with no feedback gets no file (an old one is removed), so the files are a function of the store alone:
the same feedback gives the same bytes, and the ``ingest`` stage (whose ``data/raw`` dependency holds them)
re-runs only when feedback arrived. Ingest drops the texts already in the data and pins the rest to the train
split (``ingest.feedback_dir``, docs/monitoring.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig
from bertops.data.io import atomic_open
from bertops.data.validate import normalise_text
from bertops.model.entities import OUTSIDE, Word, split_words
from bertops.monitoring.store import FEEDBACK, RECORDS, Store, store_uri

log = logging.getLogger(__name__)

TASKS = ("classification", "ner")


class FeedbackSourceError(ValueError):
    """Feedback that cannot become training data; the message names the request and what is wrong."""


def _words(text: str) -> list[Word]:
    """The words of ``text`` with offsets, by BERT's pre-tokenisation (the rule of bertops' NER models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return split_words(tok, text)


def bio_tags(text: str, entities: list[dict[str, Any]], where: str) -> tuple[list[str], list[str]]:
    """``(tokens, tags)`` of ``text`` with ``entities`` (``{"start", "end", "type"}``, character offsets) as
    BIO tags. An entity must start at a word's start and end at a word's end, and not overlap another."""
    words = _words(text)
    tags = [OUTSIDE] * len(words)
    for e in sorted(entities, key=lambda e: e["start"]):
        inside = [i for i, (_, s, t) in enumerate(words) if s >= e["start"] and t <= e["end"]]
        span = text[e["start"] : e["end"]]
        if not inside or words[inside[0]][1] != e["start"] or words[inside[-1]][2] != e["end"]:
            raise FeedbackSourceError(
                f"{where}: entity [{e['start']}, {e['end']}) {span!r} ({e['type']}) does not start and end on "
                f"word boundaries of the text {text[:80]!r}; send the feedback again with word offsets"
            )
        if any(tags[i] != OUTSIDE for i in inside):
            raise FeedbackSourceError(f"{where}: entity [{e['start']}, {e['end']}) {span!r} overlaps another")
        tags[inside[0]] = f"B-{e['type']}"
        for i in inside[1:]:
            tags[i] = f"I-{e['type']}"
    return [w for w, _, _ in words], tags


def labelled_texts(
    records: Iterable[dict[str, Any]], feedback: Iterable[dict[str, Any]]
) -> dict[str, list[dict]]:
    """Per task, one row per feedback-labelled recorded text (the latest feedback of a text wins), in the order
    the texts were first served."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(feedback, key=lambda f: f["time"]):
        if row["label"] is not None or row["entities"] is not None:
            latest[(row["request_id"], row["index"])] = row
    chosen: dict[tuple[str, str], tuple[dict, dict]] = {}  # (task, normalised text) -> (record, feedback)
    for rec in records:
        fb = latest.get((rec["request_id"], rec["index"]))
        if fb is None or rec["text"] is None:
            continue
        key = (rec["task"], normalise_text(rec["text"]))
        if key not in chosen or fb["time"] >= chosen[key][1]["time"]:
            chosen[key] = (chosen[key][0] if key in chosen else rec, fb)  # first served, latest label
    out: dict[str, list[dict]] = {task: [] for task in TASKS}
    for (task, _), (rec, fb) in chosen.items():
        where = f"feedback of request {fb['request_id']!r}, index {fb['index']}"
        ids = {"request_id": fb["request_id"], "index": fb["index"]}
        if task == "ner":
            if fb["entities"] is None:
                raise FeedbackSourceError(f"{where}: an NER model's text needs 'entities', not a label")
            tokens, tags = bio_tags(rec["text"], json.loads(fb["entities"]), where)
            out["ner"].append({"tokens": tokens, "tags": tags, **ids})
        elif task == "classification":
            if fb["label"] is None:
                raise FeedbackSourceError(f"{where}: a classifier's text needs a 'label', not entities")
            out["classification"].append({"text": rec["text"], "label": fb["label"], **ids})
    return out


def export_feedback(
    store: Store, files: dict[str, Path], models: dict[str, str] | None = None
) -> dict[str, int]:
    """Write each task's feedback-labelled texts to ``files[task]`` (see the module docstring); returns the number
    of texts per task. ``models[task]``: only the texts that registered model served (feedback belongs to the
    model it was given to). Raises :class:`FeedbackSourceError` before writing anything on bad feedback."""
    records = [] if (t := store.read(RECORDS)) is None else t.to_pylist()
    if models is not None:
        records = [r for r in records if models.get(r["task"]) == r["model"]]
    feedback = [] if (t := store.read(FEEDBACK)) is None else t.to_pylist()
    rows = labelled_texts(records, feedback)
    for task, task_rows in rows.items():
        if task not in files:
            continue
        path = files[task]
        if not task_rows:
            if path.exists():
                log.warning(
                    "feedback source %s: the store has no %s feedback now; removing the file", path, task
                )
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            for row in task_rows:
                fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        log.info(
            "feedback source %s: %d %s texts (%d feedback rows)", path, len(task_rows), task, len(feedback)
        )
    return {task: len(task_rows) for task, task_rows in rows.items()}


def export_for_retrain(cfg: BertopsConfig, root: Path) -> dict[str, int]:
    """bert_retrain's first data step, before its ``dvc repro``: the feedback given to ``cfg``'s registered models
    (``registry.model_name`` for classification, ``registry.ner_model_name`` for NER) from the monitoring store into
    their folders of ``ingest.feedback_dir`` (relative: under ``root``). Another model's feedback stays out.
    Nothing to do when feedback is off or the store is empty."""
    files: dict[str, Path] = {}
    for task in TASKS:
        path = cfg.feedback_file(task)
        if path is not None:
            files[task] = path if path.is_absolute() else root / path
    if not files:
        return {}
    counts = export_feedback(
        Store(store_uri(cfg, root)), files, {task: cfg.model_name_for(task) for task in TASKS}
    )
    log.info("feedback exported for the retrain: %s", counts)
    return counts
