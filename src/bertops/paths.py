"""Where every stage reads and writes, relative to the data root (``project.data_dir``).

One place for file names, so that DVC stages, training, evaluation and serving agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
TASKS = ("classification", "ner")


@dataclass(frozen=True)
class DataLayout:
    root: Path = Path("data")

    # ingest: normalised JSONL, one record a line
    @property
    def ingested(self) -> Path:
        return self.root / "ingested"

    @property
    def corpus(self) -> Path:  # {"doc_id", "sentences": [str, ...], "source", "row"}
        return self.ingested / "corpus.jsonl"

    @property
    def classification(self) -> Path:  # {"text", "label", "source", "row"}
        return self.ingested / "classification.jsonl"

    @property
    def ner(self) -> Path:  # {"tokens": [str], "tags": [str], "source", "row"}
        return self.ingested / "ner.jsonl"

    # validate
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def data_report_json(self) -> Path:
        return self.reports / "data_report.json"

    # split: data/split/<task>/<split>.jsonl and data/split/corpus/{train,heldout}.jsonl
    @property
    def split_dir(self) -> Path:
        return self.root / "split"

    def split_file(self, task: str, split: str) -> Path:
        return self.split_dir / task / f"{split}.jsonl"

    # vocab
    @property
    def vocab_dir(self) -> Path:
        return self.root / "vocab"

    @property
    def vocab_file(self) -> Path:
        return self.vocab_dir / "vocab.txt"

    @property
    def tokenizer_file(self) -> Path:
        return self.vocab_dir / "tokenizer.json"

    # pretraining instances: data/pretrain/<train|heldout>/shard-*.tfrecord + manifest.json
    @property
    def pretrain_dir(self) -> Path:
        return self.root / "pretrain"

    # fine-tuning sets: data/finetune/<task>/<split>.tfrecord + manifest.json + label_map.json
    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    def finetune_task_dir(self, task: str) -> Path:
        return self.finetune_dir / task


MANIFEST = "manifest.json"
LABEL_MAP = "label_map.json"
