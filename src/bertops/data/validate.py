"""The ``validate`` stage: check the ingested data and write the data report.

Checks (each failure is a :class:`~bertops.data.errors.DataError` naming the *raw* file, row and field):

- schema: every record has its fields with the right types (text str, label str, tokens/tags lists of str);
- classification: texts non-empty and at most ``validate.max_text_chars``; labels inside ``validate.labels``
  (when it is set; otherwise the labels found in the data, sorted, are the label map, see :func:`resolve_labels`);
  at least two classes and the rarest at least ``validate.min_class_fraction`` of rows; no text (compared
  after :func:`normalise_text`) with two different labels; duplicates (same text, same label) reported and an
  error above ``validate.max_duplicate_fraction``;
- NER: as many tags as tokens, tags of the form ``O`` / ``B-type`` / ``I-type`` (an ``I-`` that does not
  continue its entity is counted, not fatal: WNUT-16 has a few);
- corpus: every document has a sentence; duplicate documents are reported.

Duplicates matter beyond their share: the ``split`` stage keeps identical texts in one split, so they can
never leak between train and test. The report (``data/reports/data_report.{json,md,html}``; the JSON is a
DVC metrics file) holds counts, label and tag balance, length statistics and the problems found. On failure
the report goes to ``<state_dir>/reports/data_report.failed.*`` instead, so the last good report stays.
"""

from __future__ import annotations

import html
import json
import logging
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig
from bertops.data.errors import DataError
from bertops.data.io import INGEST_STATS, read_jsonl, write_json, write_text
from bertops.paths import DataLayout

log = logging.getLogger(__name__)

_TAG = re.compile(r"^(O|[BI]-\S+)$")
MAX_EXAMPLES = 10


def normalise_text(text: str) -> str:
    """The key under which two texts count as identical: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def resolve_labels(configured: list[str] | None, observed: Iterable[str]) -> list[str]:
    """The label map: ``validate.labels`` when set, else every label found in the data, sorted.

    The order is the model's output order; the data report records it and ``finetune_data`` writes it.
    """
    return list(configured) if configured else sorted(set(observed))


def length_stats(values: list[int]) -> dict[str, float]:
    """min / mean / median / p95 / max of a list of lengths (zeros when empty)."""
    if not values:
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p50": float(statistics.median(ordered)),
        "p95": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max": ordered[-1],
    }


class _Problems:
    """Collects every problem, so that one run reports them all; the first is raised."""

    def __init__(self) -> None:
        self.errors: list[DataError] = []
        self.warnings: list[str] = []

    def error(
        self,
        message: str,
        rec: dict[str, Any] | None = None,
        fld: str | None = None,
        file: str | None = None,
        hint: str | None = None,
        row: int | None = None,
    ) -> None:
        """Record a problem, located by the record's raw ``source``/``row``, else by ``file``/``row``."""
        self.errors.append(
            DataError(
                message,
                file=rec.get("source", file) if rec else file,
                row=rec.get("row") if rec else row,
                field=fld,
                hint=hint,
            )
        )


def _check_fields(rec: dict[str, Any], spec: dict[str, type], path: Path, lineno: int, p: _Problems) -> bool:
    for name, typ in spec.items():
        value = rec.get(name)
        ok = isinstance(value, typ) and (typ is not list or all(isinstance(v, str) for v in value))
        if not ok:
            p.error(
                f"expected {typ.__name__}{' of str' if typ is list else ''}, got {type(value).__name__}",
                fld=name,
                file=str(path),
                row=lineno,
            )
            return False
    return True


def check_classification(path: Path, cfg: BertopsConfig, p: _Problems) -> dict[str, Any]:
    vc = cfg.validate_data
    labels = Counter()
    by_text: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # norm text -> label -> first record
    chars, words = [], []
    n = duplicates = 0
    for lineno, rec in enumerate(read_jsonl(path), start=1):
        if not _check_fields(rec, {"text": str, "label": str}, path, lineno, p):
            continue
        n += 1
        text, label = rec["text"], rec["label"]
        if not text.strip():
            p.error("empty or whitespace-only text", rec, "text")
            continue
        if len(text) > vc.max_text_chars:
            p.error(
                f"text has {len(text)} characters, above validate.max_text_chars={vc.max_text_chars}",
                rec,
                "text",
            )
        if vc.labels and label not in vc.labels:
            p.error(
                f"label {label!r} is not one of validate.labels {vc.labels}",
                rec,
                "label",
                hint="fix the row, map it with ingest.classification.label_mapping, or drop it with "
                "exclude_labels",
            )
        labels[label] += 1
        chars.append(len(text))
        words.append(len(text.split()))
        seen = by_text[normalise_text(text)]
        if label in seen:
            duplicates += 1
        elif seen:
            first = next(iter(seen.values()))
            p.error(
                f"conflicting labels for the same text: {label!r} here, {first['label']!r} at "
                f"{first['source']} row {first['row']}",
                rec,
                "label",
            )
        seen.setdefault(label, rec)
    label_set = resolve_labels(vc.labels, labels)
    known = {k: v for k, v in labels.items() if k in label_set}  # an unknown label is an error of its own
    if n == 0:
        p.error("no classification records", file=str(path))
    elif len(labels) < 2:
        p.error(
            f"single-class dataset: every row has label {next(iter(labels))!r}; a classifier needs two "
            "classes or more",
            file=str(path),
            fld="label",
        )
    elif known and min(known.values()) / n < vc.min_class_fraction:
        rare, count = min(known.items(), key=lambda kv: kv[1])
        p.error(
            f"class {rare!r} has {count} of {n} rows ({count / n:.1%}), below "
            f"validate.min_class_fraction={vc.min_class_fraction}",
            file=str(path),
            fld="label",
        )
    if n and duplicates / n > vc.max_duplicate_fraction:
        p.error(
            f"{duplicates} of {n} texts are duplicates ({duplicates / n:.1%}), above "
            f"validate.max_duplicate_fraction={vc.max_duplicate_fraction}",
            file=str(path),
            fld="text",
        )
    missing = [lab for lab in label_set if lab not in labels]
    if n and missing:
        p.warnings.append(f"classification: configured labels with no rows: {missing}")
    return {
        "records": n,
        "unique_texts": len(by_text),
        "duplicates": duplicates,
        "labels": dict(sorted(labels.items())),
        # The label map the model is trained with (finetune_data uses the same rule on the splits).
        "label_set": label_set,
        "labels_from": "validate.labels" if vc.labels else "data",
        "label_fractions": {k: round(v / n, 4) for k, v in sorted(labels.items())} if n else {},
        "chars": length_stats(chars),
        "words": length_stats(words),
    }


def check_ner(path: Path, p: _Problems) -> dict[str, Any]:
    tags: Counter[str] = Counter()
    entities: Counter[str] = Counter()
    lengths: list[int] = []
    texts: Counter[str] = Counter()
    n = bad_continuations = 0
    for lineno, rec in enumerate(read_jsonl(path), start=1):
        if not _check_fields(rec, {"tokens": list, "tags": list}, path, lineno, p):
            continue
        n += 1
        tokens, tag_seq = rec["tokens"], rec["tags"]
        if not tokens:
            p.error("sentence has no tokens", rec, "tokens")
        if len(tokens) != len(tag_seq):
            p.error(f"{len(tokens)} tokens but {len(tag_seq)} tags", rec, "tags")
            continue
        prev = "O"
        for i, tag in enumerate(tag_seq):
            if not _TAG.match(tag):
                p.error(f"tag {tag!r} (token {i + 1}) is not O, B-<type> or I-<type>", rec, "tags")
                break
            if tag.startswith("B-"):
                entities[tag[2:]] += 1
            elif tag.startswith("I-") and prev[2:] != tag[2:]:
                bad_continuations += 1
            tags[tag] += 1
            prev = tag
        lengths.append(len(tokens))
        texts[normalise_text(" ".join(tokens))] += 1
    if n == 0:
        p.error("no NER records", file=str(path))
    if bad_continuations:
        p.warnings.append(f"ner: {bad_continuations} I- tags that do not continue an entity of their type")
    return {
        "records": n,
        "duplicates": sum(c - 1 for c in texts.values()),
        "tags": dict(sorted(tags.items())),
        "entities": dict(sorted(entities.items())),
        "entity_types": len(entities),
        "bad_continuations": bad_continuations,
        "tokens": length_stats(lengths),
    }


def check_corpus(path: Path, p: _Problems) -> dict[str, Any]:
    docs = sentences = words = 0
    sent_words: list[int] = []
    doc_sents: list[int] = []
    seen: Counter[str] = Counter()
    for lineno, rec in enumerate(read_jsonl(path), start=1):
        if not _check_fields(rec, {"doc_id": str, "sentences": list}, path, lineno, p):
            continue
        docs += 1
        if not rec["sentences"]:
            p.error("document has no sentences", rec, "sentences")
        doc_sents.append(len(rec["sentences"]))
        for s in rec["sentences"]:
            n_words = len(s.split())
            sent_words.append(n_words)
            words += n_words
        sentences += len(rec["sentences"])
        seen[normalise_text(" ".join(rec["sentences"]))] += 1
    if docs == 0:
        p.error("no corpus documents", file=str(path))
    return {
        "documents": docs,
        "sentences": sentences,
        "words": words,
        "duplicate_documents": sum(c - 1 for c in seen.values()),
        "sentences_per_document": length_stats(doc_sents),
        "words_per_sentence": length_stats(sent_words),
    }


def build_report(cfg: BertopsConfig, layout: DataLayout) -> tuple[dict[str, Any], list[DataError]]:
    """Run every check on the ingested files; returns the report and the errors found (empty = valid)."""
    p = _Problems()
    report: dict[str, Any] = {
        "classification": check_classification(layout.classification, cfg, p),
        "ner": check_ner(layout.ner, p),
        "corpus": check_corpus(layout.corpus, p),
    }
    stats_file = layout.ingested / INGEST_STATS
    if stats_file.exists():
        ingest = json.loads(stats_file.read_text(encoding="utf-8"))
        report["ingest"] = {
            k: {
                "rows_read": v["rows_read"],
                "excluded": v["excluded"],
                "dropped_empty": v["dropped_empty"],
                "control_chars_removed": v.get("control_chars_removed", 0),
                "multiline_rows": v.get("multiline_rows", 0),
            }
            for k, v in ingest.items()
        }
        for k, v in ingest.items():
            if v.get("control_chars_removed"):
                p.warnings.append(
                    f"{k}: removed {v['control_chars_removed']} control characters (NUL and other C0/C1 controls) "
                    f"from {v['control_char_rows']} fields, e.g. " + ", ".join(v["control_char_examples"][:3])
                )
            if v.get("multiline_rows"):
                p.warnings.append(
                    f"{k}: {v['multiline_rows']} CSV rows have a quoted text spanning lines (check for a misplaced "
                    "quote), e.g. " + ", ".join(v["multiline_examples"][:3])
                )
            if v.get("ignored_files"):
                p.warnings.append(
                    f"{k}: files outside any label folder were ignored, e.g. "
                    + ", ".join(v["ignored_files"][:3])
                )
            if v["dropped_empty"]:
                p.warnings.append(
                    f"{k}: dropped {v['dropped_empty']} empty texts (ingest.drop_empty), e.g. "
                    + ", ".join(v["dropped_empty_rows"][:3])
                )
    report["status"] = "failed" if p.errors else "passed"
    report["errors"] = len(p.errors)
    report["problems"] = [str(e) for e in p.errors[:50]]
    report["warnings"] = p.warnings
    return report, p.errors


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a readable Markdown page."""
    lines = ["# Data report", "", f"**Status: {report['status']}** ({report['errors']} errors)", ""]
    c, n, k = report["classification"], report["ner"], report["corpus"]
    lines += ["## Classification", ""]
    if "label_set" in c:
        lines += [f"Label map ({c['labels_from']}): {', '.join(c['label_set'])}.", ""]
    lines += ["| label | rows | share |", "|---|---:|---:|"]
    lines += [
        f"| {lab} | {cnt} | {c['label_fractions'].get(lab, 0):.1%} |" for lab, cnt in c["labels"].items()
    ]
    lines += [
        "",
        f"{c['records']} rows, {c['unique_texts']} distinct texts, {c['duplicates']} duplicates.",
        "",
    ]
    lines += ["| length | min | mean | p50 | p95 | max |", "|---|---:|---:|---:|---:|---:|"]
    for name, st in (("characters", c["chars"]), ("words", c["words"])):
        lines.append(f"| {name} | {st['min']} | {st['mean']} | {st['p50']} | {st['p95']} | {st['max']} |")
    lines += [
        "",
        "## NER",
        "",
        f"{n['records']} sentences, {n['duplicates']} duplicates, "
        f"{n['entity_types']} entity types; tokens per sentence p50 {n['tokens']['p50']}, "
        f"max {n['tokens']['max']}.",
        "",
        "| entity | count |",
        "|---|---:|",
    ]
    lines += [f"| {e} | {cnt} |" for e, cnt in n["entities"].items()]
    lines += [
        "",
        "## Corpus",
        "",
        f"{k['documents']} documents, {k['sentences']} sentences, {k['words']} words, "
        f"{k['duplicate_documents']} duplicate documents; words per sentence p50 "
        f"{k['words_per_sentence']['p50']}, p95 {k['words_per_sentence']['p95']}.",
        "",
    ]
    if report.get("ingest"):
        lines += [
            "## Ingestion",
            "",
            "| data set | rows read | excluded | dropped empty | control chars removed |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {v['rows_read']} | {v['excluded']} | {v['dropped_empty']} | "
            f"{v.get('control_chars_removed', 0)} |"
            for name, v in report["ingest"].items()
        ]
        lines.append("")
    for title, items in (("Problems", report["problems"]), ("Warnings", report["warnings"])):
        if items:
            lines += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
    return "\n".join(lines)


def render_html(markdown: str) -> str:
    """A self-contained HTML page of the Markdown report (tables, headings, lists; no external assets)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, rows = table[0], [r for r in table[2:]]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        flush()
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line.lstrip("#- ").strip()))
        if line.startswith("## "):
            body.append(f"<h2>{text}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{text}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{text}</li>")
        elif text:
            body.append(f"<p>{text}</p>")
    flush()
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px;border:1px solid #ccc}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Data report</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def write_report(report: dict[str, Any], json_path: Path) -> None:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.html`` next to each other, each atomically."""
    md = render_markdown(report)
    write_json(json_path, report)
    write_text(json_path.with_suffix(".md"), md)
    write_text(json_path.with_suffix(".html"), render_html(md))


def run_validate(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, Any]:
    """Validate the ingested data and write the report; raises the first :class:`DataError` when invalid."""
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    report, errors = build_report(cfg, layout)
    if errors:
        failed = cfg.state_dir / "reports" / "data_report.failed.json"
        write_report(report, failed)
        first = errors[0]
        more = f"{len(errors) - 1} more problem(s) and " if len(errors) > 1 else ""
        raise DataError(
            first.message,
            file=first.file,
            row=first.row,
            field=first.field,
            hint=f"{first.hint + '; ' if first.hint else ''}{more}the full report: {failed.with_suffix('.md')}",
        )
    write_report(report, layout.data_report_json)
    for w in report["warnings"]:
        log.warning("%s", w)
    log.info("validate: passed; report %s", layout.data_report_json)
    return report
