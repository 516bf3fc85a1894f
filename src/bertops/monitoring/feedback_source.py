"""Feedback-labelled requests as training data: the served texts that got a true label, as a JSONL source.

    export_feedback(Store(store_uri(cfg)), DataLayout(Path("data")), Path("data/raw/feedback/feedback.jsonl"))

Joins the feedback rows with the records on ``(request_id, index)`` (only records that kept their text:
``monitoring.store_text: true``), keeps the latest label of each text, and drops every text already in a split
of the current data (train, validation or test, compared by :func:`bertops.data.validate.normalise_text`, the
key the split stage groups by) and duplicates among themselves. Writes ``{"text", "label", "request_id"}`` a
line, atomically. Wiring this file into the ingest stage as a DVC-tracked source that never reaches the test
split is not done yet (docs/monitoring.md, *Not yet*).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bertops.data.io import atomic_open
from bertops.data.validate import normalise_text
from bertops.monitoring.store import FEEDBACK, RECORDS, Store
from bertops.paths import DataLayout

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def labelled_texts(records: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"text", "label", "request_id"}`` for each recorded text with a feedback label (the latest wins)."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(feedback, key=lambda f: f["time"]):
        if row["label"] is not None:
            latest[(row["request_id"], row["index"])] = row
    out = []
    for rec in records:
        fb = latest.get((rec["request_id"], rec["index"]))
        if fb is not None and rec["text"] is not None:
            out.append({"text": rec["text"], "label": fb["label"], "request_id": rec["request_id"]})
    return out


def export_feedback(store: Store, layout: DataLayout, out: Path, task: str = "classification") -> int:
    """Write the new feedback-labelled texts to ``out``; returns how many (see the module docstring)."""
    seen = set()
    for split in SPLITS:
        path = layout.split_file(task, split)
        if path.is_file():
            seen.update(
                normalise_text(json.loads(line)["text"])
                for line in path.read_text("utf-8").splitlines()
                if line
            )
    records = [] if (t := store.read(RECORDS)) is None else t.to_pylist()
    feedback = [] if (t := store.read(FEEDBACK)) is None else t.to_pylist()
    kept = []
    for row in labelled_texts(records, feedback):
        key = normalise_text(row["text"])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        for row in kept:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info("feedback source %s: %d texts (%d labelled rows)", out, len(kept), len(feedback))
    return len(kept)
