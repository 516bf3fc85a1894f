"""The ``ingest`` stage: bring every source into one normalised JSONL form (see docs/architecture.md).

- corpus (unlabelled, for pretraining): ``{"doc_id", "sentences": [str], "source", "row"}`` per document;
- classification: ``{"text", "label", "source", "row"}``;
- NER: ``{"tokens": [str], "tags": [str], "source", "row"}``.

``source`` and ``row`` point back to the raw input, so that the ``validate`` stage names the raw file and row
of any problem. Feedback-labelled served texts (``ingest.feedback_dir``, :func:`iter_feedback`) follow the
classification and NER records, pinned to the train split (``"split": "train"``). Empty or whitespace-only texts fail the stage unless ``ingest.drop_empty`` is set, in which case
they are dropped and listed in ``ingest_stats.json`` (which the data report includes). The three outputs and the
stats are written together: a failure in any source leaves all four files as they were.

Fields are read as they are (:class:`_Fields`): a text or token that is not a string is an error naming file,
row and field (an integer label becomes its decimal string, a JSON ``null`` text counts as empty); control
characters are removed by :func:`clean_text` and counted. In the folder layout each file is a classification
record labelled by its folder (:func:`bertops.data.sources.folder_layout`).

Run it as ``python pipelines/ingest.py --params params.yaml`` (DVC does) or call :func:`run_ingest`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig, SourceConfig
from bertops.data import sources
from bertops.data.errors import DataError
from bertops.data.io import INGEST_STATS, atomic_open
from bertops.data.sentences import split_sentences
from bertops.data.validate import normalise_text
from bertops.paths import DataLayout

log = logging.getLogger(__name__)

MAX_LISTED = 20  # dropped rows listed by location in the stats; the count is always complete


@dataclass
class IngestStats:
    """What one data set's ingestion read, kept, dropped and cleaned."""

    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    records: int = 0
    excluded: int = 0  # rows whose raw label is in exclude_labels
    dropped_empty: int = 0
    dropped_empty_rows: list[str] = field(default_factory=list)  # "file:row" of the first MAX_LISTED
    control_chars_removed: int = 0  # characters removed by clean_text (NUL and other C0/C1 controls)
    control_char_rows: int = 0
    control_char_examples: list[str] = field(default_factory=list)
    multiline_rows: int = 0  # CSV rows whose quoted field spans lines (legal, but so is a misplaced quote)
    multiline_examples: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # folder layout: files in the root, outside labels
    feedback_files: list[str] = field(default_factory=list)  # ingest.feedback_dir files read
    feedback_records: int = 0  # feedback-labelled texts added (train split only)
    feedback_duplicates: int = 0  # feedback texts dropped: the same normalised text is in the data already
    feedback_duplicate_rows: list[str] = field(
        default_factory=list
    )  # "file:row (request id)" of the first MAX_LISTED

    def drop_empty(self, sf: sources.SourceFile, row: int) -> None:
        self.dropped_empty += 1
        if len(self.dropped_empty_rows) < MAX_LISTED:
            self.dropped_empty_rows.append(f"{sf.name}:{row}")

    def cleaned(self, where: str, removed: int) -> None:
        if removed:
            self.control_chars_removed += removed
            self.control_char_rows += 1
            if len(self.control_char_examples) < MAX_LISTED:
                self.control_char_examples.append(where)


def _empty(sf: sources.SourceFile, row: int, fld: str, stats: IngestStats, drop: bool) -> None:
    """Handle an empty text: drop and count it, or fail naming where it is."""
    if not drop:
        raise DataError(
            "empty or whitespace-only text",
            file=sf.name,
            row=row,
            field=fld,
            hint="fix the row, or set ingest.drop_empty: true to drop (and report) such rows",
        )
    stats.drop_empty(sf, row)


# C0 and C1 control characters (Unicode category Cc) except tab, line feed and carriage return, which are
# whitespace. NUL bytes and stray escapes in exported text are of this kind; format characters (Cf: zero-width
# joiners, soft hyphens) are kept, since scripts such as Persian and emoji sequences need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> tuple[str, int]:
    """``text`` without control characters (see ``_CONTROL``), and how many were removed."""
    return _CONTROL.subn("", text)


class _Fields:
    """Typed access to one raw row: strings stay strings, anything else is an error naming file, row, field."""

    def __init__(self, sf: sources.SourceFile, row: int, fields: dict[str, Any], stats: IngestStats) -> None:
        self.sf, self.row, self.fields, self.stats = sf, row, fields, stats

    def _error(self, name: str, expected: str, value: Any) -> DataError:
        return DataError(
            f"expected {expected}, got {type(value).__name__} {value!r:.40}",
            file=self.sf.name,
            row=self.row,
            field=name,
            hint='nothing is converted: quote the value in the file (JSON "...")',
        )

    def _clean(self, name: str, value: str) -> str:
        value, removed = clean_text(value)
        self.stats.cleaned(f"{self.sf.name}:{self.row}:{name}", removed)
        return value

    def text(self, name: str) -> str:
        """A text field: a string; null (JSON/Parquet) counts as empty."""
        value = self.fields.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._error(name, "a string", value)
        if self.sf.format == "csv" and "\n" in value:
            self.stats.multiline_rows += 1
            if len(self.stats.multiline_examples) < MAX_LISTED:
                self.stats.multiline_examples.append(f"{self.sf.name}:{self.row}")
        return self._clean(name, value)

    def label(self, name: str) -> str:
        """A label: a string, or an integer (JSON ``0``/``1`` labels), written as its decimal string."""
        value = self.fields.get(name)
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self._error(name, "a string or an integer label", value)
        return self._clean(name, value).strip()

    def words(self, name: str) -> list[str]:
        """A token or tag column: a list of strings (JSONL/Parquet) or a whitespace-separated string (CSV)."""
        value = self.fields.get(name)
        if value is None:
            return []
        if isinstance(value, str):
            return self._clean(name, value).split()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._error(name, "a list of strings", value)
        cleaned = [self._clean(name, v) for v in value]
        for i, word in enumerate(cleaned, start=1):
            if not word.strip():
                raise DataError(
                    f"token {i} is empty (or only control characters / whitespace)",
                    file=self.sf.name,
                    row=self.row,
                    field=name,
                )
        return cleaned


def _rows(
    sf: sources.SourceFile, cfg: SourceConfig, columns: list[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a columnar file, or one row per document of a text file (its text under ``text_column``)."""
    if sf.format == "text":
        return ((r, {cfg.text_column: block}) for r, block in sources.iter_text_blocks(sf, cfg.encoding))
    return sources.iter_rows(sf, cfg.encoding, columns)


def _refuse_folder(sf: sources.SourceFile, name: str) -> None:
    if sf.format == "folder":
        raise DataError(
            f"format folder (<dir>/<label>/<file>) is for classification data, not {name}",
            file=sf.name,
            field="format",
            hint='for a corpus of files use a glob, e.g. "data/raw/corpus/**/*.txt" (format text)',
        )


def iter_corpus(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool, min_chars: int) -> Iterator[dict]:
    """Documents of sentences from a corpus source (CSV/JSONL/Parquet with text (+title) columns, or text),
    split by the segmenter of ``cfg.language`` (:func:`bertops.data.sentences.split_sentences`)."""
    for sf in sources.resolve_source(cfg):
        _refuse_folder(sf, "a corpus")
        stats.files.append(sf.name)
        cols = [cfg.text_column] + ([cfg.title_column] if cfg.title_column else [])
        for row, raw in _rows(sf, cfg, cols):
            stats.rows_read += 1
            fields = _Fields(sf, row, raw, stats)
            body = split_sentences(fields.text(cfg.text_column), min_chars, cfg.language)
            if not body:  # a title alone is no document
                _empty(sf, row, cfg.text_column, stats, drop_empty)
                continue
            title = fields.text(cfg.title_column) if cfg.title_column else ""
            sentences = split_sentences(title, min_chars, cfg.language) + body
            stats.records += 1
            yield {"doc_id": f"{sf.name}#{row}", "sentences": sentences, "source": sf.name, "row": row}
            if cfg.max_records and stats.records >= cfg.max_records:
                return


def _folder_rows(
    sf: sources.SourceFile, cfg: SourceConfig, stats: IngestStats
) -> Iterator[tuple[sources.SourceFile, int, dict[str, Any]]]:
    """Folder layout: one row per file, its label the folder name (row 1: the whole file is the record)."""
    by_label, loose = sources.folder_layout(sf)
    stats.ignored_files = [str(p) for p in loose[:MAX_LISTED]]
    if loose:
        log.warning("%s: %d file(s) outside any label folder ignored, e.g. %s", sf.name, len(loose), loose[0])
    for label, files in by_label.items():
        for path in files:
            doc = sources.SourceFile(path=path, name=str(path), format="folder")
            yield (
                doc,
                1,
                {cfg.text_column: sources.read_document(path, cfg.encoding), cfg.label_column: label},
            )


def iter_classification(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool) -> Iterator[dict]:
    """``(text, label)`` records; raw labels in ``exclude_labels`` are skipped, then ``label_mapping`` applies.

    In the folder layout each file is a record and its folder's name is the raw label."""
    for sf in sources.resolve_source(cfg):
        stats.files.append(sf.name)
        if sf.format == "folder":
            rows: Iterator[tuple[sources.SourceFile, int, dict[str, Any]]] = _folder_rows(sf, cfg, stats)
        else:
            rows = (
                (sf, r, f)
                for r, f in sources.iter_rows(sf, cfg.encoding, [cfg.text_column, cfg.label_column])
            )
        for where, row, raw in rows:
            stats.rows_read += 1
            fields = _Fields(where, row, raw, stats)
            raw_label = fields.label(cfg.label_column)
            if raw_label in cfg.exclude_labels:
                stats.excluded += 1
                continue
            if not raw_label:
                raise DataError("missing label", file=where.name, row=row, field=cfg.label_column)
            text = " ".join(fields.text(cfg.text_column).split())
            if not text:
                _empty(where, row, cfg.text_column, stats, drop_empty)
                continue
            stats.records += 1
            label = cfg.label_mapping.get(raw_label, raw_label)
            yield {"text": text, "label": label, "source": where.name, "row": row}
            if cfg.max_records and stats.records >= cfg.max_records:
                return


def iter_ner(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool) -> Iterator[dict]:
    """``(tokens, tags)`` records from CoNLL files, or from list / space-separated columns."""
    for sf in sources.resolve_source(cfg):
        _refuse_folder(sf, "NER")
        stats.files.append(sf.name)
        if sf.format == "conll":
            rows: Iterator[tuple[int, dict[str, Any]]] = (
                (r, {cfg.tokens_column: toks, cfg.tags_column: tags})
                for r, toks, tags in sources.iter_conll(sf, cfg.encoding)
            )
        else:
            rows = sources.iter_rows(sf, cfg.encoding, [cfg.tokens_column, cfg.tags_column])
        for row, raw in rows:
            stats.rows_read += 1
            fields = _Fields(sf, row, raw, stats)
            tokens, tags = fields.words(cfg.tokens_column), fields.words(cfg.tags_column)
            if len(tokens) != len(tags):
                raise DataError(
                    f"{len(tokens)} tokens but {len(tags)} tags", file=sf.name, row=row, field=cfg.tags_column
                )
            if not tokens:
                _empty(sf, row, cfg.tokens_column, stats, drop_empty)
                continue
            stats.records += 1
            yield {"tokens": tokens, "tags": tags, "source": sf.name, "row": row}
            if cfg.max_records and stats.records >= cfg.max_records:
                return


# The fields of a feedback file's rows (written by bertops.monitoring.feedback_source.export_feedback).
FEEDBACK_COLUMNS = {
    "classification": ["text", "label", "request_id"],
    "ner": ["tokens", "tags", "request_id"],
}


def record_key(task: str, rec: dict[str, Any]) -> str:
    """The key under which two records are the same text (the split stage groups by it)."""
    return normalise_text(rec["text"] if task == "classification" else " ".join(rec["tokens"]))


def record_classes(task: str, rec: dict[str, Any]) -> set[str]:
    """A record's label, or its entity types (NER)."""
    return (
        {rec["label"]} if task == "classification" else {t[2:] for t in rec["tags"] if t[:2] in ("B-", "I-")}
    )


def iter_feedback(
    path: Path, task: str, seen: set[str], known: set[str], stats: IngestStats
) -> Iterator[dict[str, Any]]:
    """The feedback-labelled texts of ``path`` (none when it does not exist), pinned to the train split.

    A text whose normalised form is in ``seen`` (the data's own records, or an earlier feedback row) is dropped
    and counted, so that a served text never lands in two splits and the test split stays what it was. A label
    (an entity type, for NER) outside ``known`` fails the stage naming the file, row and request id: nothing is
    written, the store keeps the feedback, the previous data stays.
    """
    if not path.is_file():
        return
    sf = sources.SourceFile(path=path, name=str(path), format="jsonl")
    stats.feedback_files.append(sf.name)
    for row, raw in sources.iter_rows(sf, "utf-8", FEEDBACK_COLUMNS[task]):
        fields = _Fields(sf, row, raw, stats)
        request = fields.label("request_id")
        if task == "classification":
            rec: dict[str, Any] = {
                "text": " ".join(fields.text("text").split()),
                "label": fields.label("label"),
            }
        else:
            rec = {"tokens": fields.words("tokens"), "tags": fields.words("tags")}
        unknown = sorted(record_classes(task, rec) - known)
        if unknown:
            what = "label" if task == "classification" else "entity type"
            raise DataError(
                f"feedback of request {request!r}: {what} {unknown[0]!r} is not one of the data's {sorted(known)}",
                file=sf.name,
                row=row,
                field="label" if task == "classification" else "tags",
                hint="POST /feedback the right label again (the latest of a text wins), or fix validate.labels; re-run",
            )
        if not record_key(task, rec):
            _empty(sf, row, FEEDBACK_COLUMNS[task][0], stats, drop=True)
            continue
        if record_key(task, rec) in seen:
            stats.feedback_duplicates += 1
            if len(stats.feedback_duplicate_rows) < MAX_LISTED:
                stats.feedback_duplicate_rows.append(f"{sf.name}:{row} ({request})")
            continue
        seen.add(record_key(task, rec))
        stats.feedback_records += 1
        yield {**rec, "source": sf.name, "row": row, "request_id": request, "split": "train"}


def _write_records(fh: Any, records: Iterator[dict], name: str, stats: IngestStats) -> list[dict[str, Any]]:
    """Write ``records``; returns them (classification and NER are small enough to keep for the feedback)."""
    kept = []
    for rec in records:
        fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
        fh.write("\n")
        if name != "corpus":
            kept.append(rec)
    if stats.records == 0:
        raise DataError(f"no {name} records were read", file=", ".join(stats.files) or stats.source)
    log.info("ingest %s: %d records from %d rows (%s)", name, stats.records, stats.rows_read, stats.source)
    return kept


def _write_feedback(
    fh: Any, cfg: BertopsConfig, task: str, records: list[dict[str, Any]], stats: IngestStats
) -> None:
    """Append the feedback of ``task``'s registered model (``ingest.feedback_dir/<model>/``) after the data's own
    ``records``."""
    path = cfg.feedback_file(task)
    if path is None:
        return
    labels = cfg.validate_data.labels if task == "classification" else None
    known = set(labels or ()) or {c for rec in records for c in record_classes(task, rec)}
    seen = {record_key(task, rec) for rec in records}
    for rec in iter_feedback(path, task, seen, known, stats):
        fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    if stats.feedback_files:
        log.info(
            "ingest %s feedback: %d texts added to train, %d already in the data dropped (%s)",
            task,
            stats.feedback_records,
            stats.feedback_duplicates,
            path,
        )


def run_ingest(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, IngestStats]:
    """Ingest the corpus, classification and NER sources of ``cfg.ingest`` into ``layout.ingested``.

    All outputs are replaced together only when every source succeeded. Returns the stats per data set.
    """
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    ic = cfg.ingest
    stats = {
        "corpus": IngestStats(ic.corpus.source),
        "classification": IngestStats(ic.classification.source),
        "ner": IngestStats(ic.ner.source),
    }
    with contextlib.ExitStack() as stack:  # each file is renamed into place only if nothing below raised
        corpus_fh = stack.enter_context(atomic_open(layout.corpus))
        cls_fh = stack.enter_context(atomic_open(layout.classification))
        ner_fh = stack.enter_context(atomic_open(layout.ner))
        stats_fh = stack.enter_context(atomic_open(layout.ingested / INGEST_STATS))
        _write_records(
            corpus_fh,
            iter_corpus(
                ic.corpus, stats["corpus"], drop_empty=ic.drop_empty, min_chars=ic.min_sentence_chars
            ),
            "corpus",
            stats["corpus"],
        )
        classification = _write_records(
            cls_fh,
            iter_classification(ic.classification, stats["classification"], drop_empty=ic.drop_empty),
            "classification",
            stats["classification"],
        )
        _write_feedback(cls_fh, cfg, "classification", classification, stats["classification"])
        ner = _write_records(
            ner_fh, iter_ner(ic.ner, stats["ner"], drop_empty=ic.drop_empty), "ner", stats["ner"]
        )
        _write_feedback(ner_fh, cfg, "ner", ner, stats["ner"])
        json.dump({k: asdict(v) for k, v in stats.items()}, stats_fh, indent=2, sort_keys=True)
        stats_fh.write("\n")
    return stats
