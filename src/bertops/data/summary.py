"""What the data pipeline has produced so far: record counts per split, vocabulary size, instance counts.

Reads only the outputs (never recomputes), so it is cheap after every ``dvc repro``::

    summary = pipeline_summary(DataLayout(Path("data")))
    summary["splits"]["classification"]["train"]  # -> 10248
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertops.paths import MANIFEST, SPLITS, DataLayout

CORPUS_SPLITS = ("train", "heldout")


def count_lines(path: Path) -> int | None:
    """Non-empty lines of a file, or None when it does not exist."""
    if not path.exists():
        return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _manifest_counts(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")).get("num_examples", {}))


def pipeline_summary(layout: DataLayout) -> dict[str, Any]:
    """Counts from every stage's outputs; a stage that has not run yet shows None."""
    splits: dict[str, dict[str, int | None]] = {
        task: {s: count_lines(layout.split_file(task, s)) for s in SPLITS}
        for task in ("classification", "ner")
    }
    splits["corpus"] = {s: count_lines(layout.split_file("corpus", s)) for s in CORPUS_SPLITS}
    report = None
    if layout.data_report_json.exists():
        report = json.loads(layout.data_report_json.read_text(encoding="utf-8")).get("status")
    return {
        "ingested": {
            "corpus": count_lines(layout.corpus),
            "classification": count_lines(layout.classification),
            "ner": count_lines(layout.ner),
        },
        "report": report,
        "splits": splits,
        "vocab_size": count_lines(layout.vocab_file),
        "pretrain_instances": _manifest_counts(layout.pretrain_dir / MANIFEST),
        "finetune_examples": {
            task: _manifest_counts(layout.finetune_task_dir(task) / MANIFEST)
            for task in ("classification", "ner")
        },
    }
