"""Sources and ingestion: formats, column mapping, builtin sets, and each bad-input error names file/row/field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertops.config import BertopsConfig, SourceConfig, validate_config
from bertops.data import sources
from bertops.data.errors import DataError
from bertops.data.ingest import IngestStats, iter_classification, iter_corpus, iter_ner, run_ingest
from bertops.paths import DataLayout


def cls_cfg(path: Path | str, **kw: object) -> SourceConfig:
    return SourceConfig(source=str(path), **kw)


def classification(cfg: SourceConfig, drop_empty: bool = False) -> tuple[list[dict], IngestStats]:
    stats = IngestStats(cfg.source)
    return list(iter_classification(cfg, stats, drop_empty=drop_empty)), stats


def test_csv_with_mapped_columns_exclusions_and_label_mapping(tmp_path: Path) -> None:
    f = tmp_path / "reviews.csv"
    f.write_text(
        'review,verdict\n"Great,  fun film",fresh\nA plot summary,plot\nDull,rotten\n', encoding="utf-8"
    )
    cfg = cls_cfg(
        f,
        text_column="review",
        label_column="verdict",
        exclude_labels=["plot"],
        label_mapping={"fresh": "positive", "rotten": "negative"},
    )
    recs, stats = classification(cfg)
    assert [(r["text"], r["label"], r["row"]) for r in recs] == [
        ("Great, fun film", "positive", 1),
        ("Dull", "negative", 3),
    ]
    assert recs[0]["source"] == str(f)
    assert (stats.rows_read, stats.excluded, stats.records) == (3, 1, 2)


def test_jsonl_parquet_and_glob(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"t": "one", "y": "pos"}) + "\n\n" + json.dumps({"t": "two", "y": 0}) + "\n",
        encoding="utf-8",
    )
    pq.write_table(pa.table({"t": ["three"], "y": ["neg"]}), tmp_path / "b.parquet")
    recs, _ = classification(cls_cfg(tmp_path / "*.*", text_column="t", label_column="y"))
    assert [(r["text"], r["label"], r["row"]) for r in recs] == [
        ("one", "pos", 1),
        ("two", "0", 3),
        ("three", "neg", 1),
    ]


def test_max_records_caps_kept_records(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("text,label\n" + "".join(f"t{i},l{i % 2}\n" for i in range(10)), encoding="utf-8")
    recs, _ = classification(cls_cfg(f, max_records=4))
    assert len(recs) == 4


def test_text_corpus_blocks_become_documents(tmp_path: Path) -> None:
    f = tmp_path / "corpus.txt"
    f.write_text("Dr. Who arrived. He left.\nThen rain.\n\n\nSecond doc here.\n", encoding="utf-8")
    stats = IngestStats("x")
    docs = list(iter_corpus(SourceConfig(source=str(f)), stats, drop_empty=False, min_chars=1))
    assert [d["sentences"] for d in docs] == [
        ["Dr. Who arrived.", "He left.", "Then rain."],
        ["Second doc here."],
    ]
    assert [d["row"] for d in docs] == [1, 5]


def test_conll_blank_lines_may_hold_a_tab(tmp_path: Path) -> None:
    f = tmp_path / "ner.conll"
    f.write_text("Empire\tB-facility\nState\tI-facility\n\t\nHi\tO\n", encoding="utf-8")
    recs = list(iter_ner(SourceConfig(source=str(f)), IngestStats("x"), drop_empty=False))
    assert [(r["tokens"], r["tags"], r["row"]) for r in recs] == [
        (["Empire", "State"], ["B-facility", "I-facility"], 1),
        (["Hi"], ["O"], 4),
    ]


def test_builtin_sets_resolve_and_read() -> None:
    cfg = BertopsConfig().ingest
    recs, stats = classification(cfg.classification.model_copy(update={"max_records": 50}))
    assert len(recs) == 50 and {r["label"] for r in recs} <= {"positive", "negative"}
    assert stats.excluded > 0  # the file starts with "plot" rows
    ner = list(iter_ner(cfg.ner.model_copy(update={"max_records": 5}), IngestStats("x"), drop_empty=False))
    assert ner[0]["tags"][14:17] == ["B-facility", "I-facility", "I-facility"]
    docs = list(
        iter_corpus(
            cfg.corpus.model_copy(update={"max_records": 2}), IngestStats("x"), drop_empty=True, min_chars=1
        )
    )
    assert docs[0]["sentences"][0].startswith("Betsy DeVos Confirmed")  # the title comes first
    assert len(docs[0]["sentences"]) > 5


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_file_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: input file does not exist"):
        classification(cls_cfg(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"\*\.csv: the glob matches no file"):
        classification(cls_cfg(tmp_path / "*.csv"))


@pytest.mark.parametrize("content", [b"", b"  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "empty.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.csv: input file is empty"):
        classification(cls_cfg(f))


def test_header_only_csv(tmp_path: Path) -> None:
    f = tmp_path / "h.csv"
    f.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="header but no data rows"):
        classification(cls_cfg(f))


def test_missing_mapped_column_names_it_and_the_available_ones(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("text,label\nhi,pos\n", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"r\.csv, field 'sentiment': mapped column\(s\) \['sentiment'\] not "
        r"found; the file has \['text', 'label'\]",
    ):
        classification(cls_cfg(f, label_column="sentiment"))
    j = tmp_path / "r.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.jsonl, row 2, field 'label'"):
        classification(cls_cfg(j))


def test_a_repeated_column_name_is_refused_naming_file_and_column(tmp_path: Path) -> None:
    """``text,category,category``: a reader would keep the last column silently and labels could flip."""
    f = tmp_path / "dup.csv"
    f.write_text("text,category,category\na fine film,fresh,rotten\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dup\.csv, field 'category': the header repeats column 'category' "
                       r"\(columns 2 and 3\)"):  # fmt: skip
        classification(cls_cfg(f, label_column="category"))
    j = tmp_path / "dup.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dup\.jsonl, row 2, field 'label': the object repeats key 'label'"):
        classification(cls_cfg(j))


def test_invalid_utf8_names_line_and_byte(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_bytes(b"text,label\nfine,pos\ncaf\xe9 au lait,neg\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3 \(byte 23\): bytes e9 are not valid utf-8"):
        classification(cls_cfg(f))
    recs, _ = classification(cls_cfg(f, encoding="latin-1"))  # the configured encoding is honoured
    assert recs[1]["text"] == "café au lait"


def test_empty_text_fails_or_is_dropped_and_reported(tmp_path: Path) -> None:
    f = tmp_path / "e.csv"
    f.write_text("text,label\nok,pos\n  \t ,neg\nfine,neg\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"e\.csv, row 2, field 'text': empty or whitespace-only text.*drop_empty"
    ):
        classification(cls_cfg(f))
    recs, stats = classification(cls_cfg(f), drop_empty=True)
    assert len(recs) == 2 and stats.dropped_empty == 1 and stats.dropped_empty_rows == [f"{f}:2"]


def test_tokens_tags_mismatch_and_bad_conll_line(tmp_path: Path) -> None:
    f = tmp_path / "n.conll"
    f.write_text("a\tO\nb c O\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"n\.conll, row 2: expected 'token<TAB>tag'"):
        list(iter_ner(SourceConfig(source=str(f)), IngestStats("x"), drop_empty=False))
    j = tmp_path / "n.jsonl"
    j.write_text('{"tokens": ["a", "b"], "tags": ["O"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"n\.jsonl, row 1, field 'tags': 2 tokens but 1 tags"):
        list(iter_ner(SourceConfig(source=str(j)), IngestStats("x"), drop_empty=False))


def test_unknown_builtin_and_undetectable_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown built-in data set builtin:imdb"):
        sources.resolve_source(SourceConfig(source="builtin:imdb"))
    f = tmp_path / "data.xyz"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.xyz: cannot tell the format"):
        sources.resolve_source(SourceConfig(source=str(f)))


def test_run_ingest_failure_leaves_previous_outputs(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("text,label\na,pos\nb,neg\n", encoding="utf-8")
    corpus = tmp_path / "c.txt"
    corpus.write_text("One. Two.\n", encoding="utf-8")
    ner = tmp_path / "n.conll"
    ner.write_text("a\tO\n", encoding="utf-8")
    data = {
        "ingest": {
            "corpus": {"source": str(corpus)},
            "classification": {"source": str(good)},
            "ner": {"source": str(ner)},
        }
    }
    layout = DataLayout(tmp_path / "data")
    run_ingest(validate_config(data), layout)
    before = {p: p.read_bytes() for p in layout.ingested.iterdir()}
    assert len(before) == 4
    data["ingest"]["ner"]["source"] = str(tmp_path / "missing.conll")  # fails after the other two were read
    with pytest.raises(DataError, match=r"missing\.conll"):
        run_ingest(validate_config(data), layout)
    assert {p: p.read_bytes() for p in layout.ingested.iterdir()} == before  # no temp files left either
