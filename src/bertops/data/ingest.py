"""The ``ingest`` stage: bring every source into one normalised JSONL form (see docs/architecture.md).

- corpus (unlabelled, for pretraining): ``{"doc_id", "sentences": [str], "source", "row"}`` per document;
- classification: ``{"text", "label", "source", "row"}``;
- NER: ``{"tokens": [str], "tags": [str], "source", "row"}``.

``source`` and ``row`` point back to the raw input, so that the ``validate`` stage names the raw file and row
of any problem. Empty or whitespace-only texts fail the stage unless ``ingest.drop_empty`` is set, in which case
they are dropped and listed in ``ingest_stats.json`` (which the data report includes). The three outputs and the
stats are written together: a failure in any source leaves all four files as they were.

Run it as ``python pipelines/ingest.py --params params.yaml`` (DVC does) or call :func:`run_ingest`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig, SourceConfig
from bertops.data import sources
from bertops.data.errors import DataError
from bertops.data.io import INGEST_STATS, atomic_open
from bertops.data.sentences import split_sentences
from bertops.paths import DataLayout

log = logging.getLogger(__name__)

MAX_LISTED = 20  # dropped rows listed by location in the stats; the count is always complete


@dataclass
class IngestStats:
    """What one data set's ingestion read, kept and dropped."""

    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    records: int = 0
    excluded: int = 0  # rows whose raw label is in exclude_labels
    dropped_empty: int = 0
    dropped_empty_rows: list[str] = field(default_factory=list)  # "file:row" of the first MAX_LISTED

    def drop_empty(self, sf: sources.SourceFile, row: int) -> None:
        self.dropped_empty += 1
        if len(self.dropped_empty_rows) < MAX_LISTED:
            self.dropped_empty_rows.append(f"{sf.name}:{row}")


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


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


def _as_list(value: Any) -> list[str]:
    """A token or tag column: a list (JSONL/Parquet) or a whitespace-separated string (CSV)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def iter_corpus(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool, min_chars: int) -> Iterator[dict]:
    """Documents of sentences from a corpus source (CSV/JSONL/Parquet with text (+title) columns, or text)."""
    for sf in sources.resolve_source(cfg):
        stats.files.append(sf.name)
        if sf.format == "text":
            rows: Iterator[tuple[int, dict[str, Any]]] = (
                (r, {cfg.text_column: block}) for r, block in sources.iter_text_blocks(sf, cfg.encoding)
            )
        else:
            cols = [cfg.text_column] + ([cfg.title_column] if cfg.title_column else [])
            rows = sources.iter_rows(sf, cfg.encoding, cols)
        for row, fields in rows:
            stats.rows_read += 1
            body = split_sentences(_as_text(fields[cfg.text_column]), min_chars)
            if not body:  # a title alone is no document
                _empty(sf, row, cfg.text_column, stats, drop_empty)
                continue
            title = _as_text(fields.get(cfg.title_column)) if cfg.title_column else ""
            sentences = split_sentences(title, min_chars) + body
            stats.records += 1
            yield {"doc_id": f"{sf.name}#{row}", "sentences": sentences, "source": sf.name, "row": row}
            if cfg.max_records and stats.records >= cfg.max_records:
                return


def iter_classification(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool) -> Iterator[dict]:
    """``(text, label)`` records; raw labels in ``exclude_labels`` are skipped, then ``label_mapping`` applies."""
    for sf in sources.resolve_source(cfg):
        stats.files.append(sf.name)
        for row, fields in sources.iter_rows(sf, cfg.encoding, [cfg.text_column, cfg.label_column]):
            stats.rows_read += 1
            raw_label = _as_text(fields[cfg.label_column]).strip()
            if raw_label in cfg.exclude_labels:
                stats.excluded += 1
                continue
            if not raw_label:
                raise DataError("missing label", file=sf.name, row=row, field=cfg.label_column)
            text = " ".join(_as_text(fields[cfg.text_column]).split())
            if not text:
                _empty(sf, row, cfg.text_column, stats, drop_empty)
                continue
            stats.records += 1
            label = cfg.label_mapping.get(raw_label, raw_label)
            yield {"text": text, "label": label, "source": sf.name, "row": row}
            if cfg.max_records and stats.records >= cfg.max_records:
                return


def iter_ner(cfg: SourceConfig, stats: IngestStats, *, drop_empty: bool) -> Iterator[dict]:
    """``(tokens, tags)`` records from CoNLL files, or from list / space-separated columns."""
    for sf in sources.resolve_source(cfg):
        stats.files.append(sf.name)
        if sf.format == "conll":
            rows: Iterator[tuple[int, list[str], list[str]]] = sources.iter_conll(sf, cfg.encoding)
        else:
            rows = (
                (r, _as_list(f[cfg.tokens_column]), _as_list(f[cfg.tags_column]))
                for r, f in sources.iter_rows(sf, cfg.encoding, [cfg.tokens_column, cfg.tags_column])
            )
        for row, tokens, tags in rows:
            stats.rows_read += 1
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


def _write_records(fh: Any, records: Iterator[dict], name: str, stats: IngestStats) -> None:
    for rec in records:
        fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
        fh.write("\n")
    if stats.records == 0:
        raise DataError(f"no {name} records were read", file=", ".join(stats.files) or stats.source)
    log.info("ingest %s: %d records from %d rows (%s)", name, stats.records, stats.rows_read, stats.source)


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
        _write_records(
            cls_fh,
            iter_classification(ic.classification, stats["classification"], drop_empty=ic.drop_empty),
            "classification",
            stats["classification"],
        )
        _write_records(ner_fh, iter_ner(ic.ner, stats["ner"], drop_empty=ic.drop_empty), "ner", stats["ner"])
        json.dump({k: asdict(v) for k, v in stats.items()}, stats_fh, indent=2, sort_keys=True)
        stats_fh.write("\n")
    return stats
