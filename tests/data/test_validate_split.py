"""Validation rules and the split: each rule fires with file/row/field; splits are deterministic, stratified,
and identical texts never cross splits."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from bertops.config import BertopsConfig, validate_config
from bertops.data.errors import DataError
from bertops.data.io import write_jsonl
from bertops.data.split import assign_splits, run_split, split_records
from bertops.data.validate import build_report, normalise_text, run_validate
from bertops.paths import DataLayout


def make_layout(
    tmp_path: Path,
    cls: list[tuple[str, str]],
    ner: list[tuple[list[str], list[str]]] | None = None,
    docs: int = 10,
) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    write_jsonl(
        layout.classification,
        [{"text": t, "label": y, "source": "raw.csv", "row": i + 1} for i, (t, y) in enumerate(cls)],
    )
    ner = ner or [(["Hi", "Bob"], ["O", "B-person"])] * 3
    write_jsonl(
        layout.ner,
        [{"tokens": a, "tags": b, "source": "n.conll", "row": i + 1} for i, (a, b) in enumerate(ner)],
    )
    write_jsonl(
        layout.corpus,
        [
            {"doc_id": f"d{i}", "sentences": [f"Doc {i} one.", "Two."], "source": "c.txt", "row": i + 1}
            for i in range(docs)
        ],
    )
    return layout


def balanced(n: int = 40) -> list[tuple[str, str]]:
    return [(f"text number {i}", "positive" if i % 2 else "negative") for i in range(n)]


def cfg(tmp_path: Path, **validate: object) -> BertopsConfig:
    return validate_config({"validate": validate, "project": {"state_dir": str(tmp_path / "state")}})


def errors_of(tmp_path: Path, rows: list[tuple[str, str]], **validate: object) -> list[str]:
    _, errors = build_report(cfg(tmp_path, **validate), make_layout(tmp_path, rows))
    return [str(e) for e in errors]


def test_valid_data_passes_and_writes_report(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, [*balanced(), ("text number 1", "positive")])
    report = run_validate(cfg(tmp_path), layout)
    assert report["status"] == "passed"
    assert report["classification"]["labels"] == {"negative": 20, "positive": 21}
    assert report["classification"]["duplicates"] == 1
    assert report["classification"]["words"]["max"] == 3
    assert report["ner"]["entities"] == {"person": 3}
    assert report["corpus"]["documents"] == 10 and report["corpus"]["sentences"] == 20
    saved = json.loads(layout.data_report_json.read_text())
    assert saved == report
    assert "| negative | 20 |" in layout.data_report_json.with_suffix(".md").read_text()
    assert "<table>" in layout.data_report_json.with_suffix(".html").read_text()


def test_label_outside_the_configured_set(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, [*balanced(), ("meh", "neutral")])
    assert errs == [
        "raw.csv, row 41, field 'label': label 'neutral' is not one of validate.labels "
        "['negative', 'positive'] (fix the row, map it with ingest.classification.label_mapping, "
        "or drop it with exclude_labels)"
    ]


def test_single_class_dataset(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, [(f"t{i}", "positive") for i in range(5)])
    assert len(errs) == 1 and "single-class dataset" in errs[0] and "classification.jsonl" in errs[0]


def test_class_balance(tmp_path: Path) -> None:
    rows = [(f"t{i}", "positive") for i in range(99)] + [("rare", "negative")]
    assert any("class 'negative' has 1 of 100 rows" in e for e in errors_of(tmp_path, rows))


def test_conflicting_labels_name_both_rows(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, [*balanced(), ("Text  NUMBER 2", "positive")])
    assert errs == [
        "raw.csv, row 41, field 'label': conflicting labels for the same text: 'positive' here, "
        "'negative' at raw.csv row 3"
    ]


def test_too_many_duplicates_and_too_long_texts(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, balanced(10) * 3, max_duplicate_fraction=0.5, max_text_chars=10)
    assert any("20 of 30 texts are duplicates" in e for e in errs)
    assert any(
        "row 1, field 'text': text has 13 characters, above validate.max_text_chars=10" in e for e in errs
    )


def test_ner_tags_checked(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, balanced(), ner=[(["a", "b"], ["O", "X-bad"]), (["c"], ["I-person"])])
    report, errors = build_report(cfg(tmp_path), layout)
    assert [str(e) for e in errors] == [
        "n.conll, row 1, field 'tags': tag 'X-bad' (token 2) is not O, B-<type> or I-<type>"
    ]
    assert report["ner"]["bad_continuations"] == 1


def test_failed_validation_keeps_the_last_good_report(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, balanced())
    run_validate(cfg(tmp_path), layout)
    good = layout.data_report_json.read_bytes()
    make_layout(tmp_path, [*balanced(), ("x", "neutral")])
    with pytest.raises(DataError, match=r"row 41, field 'label'.*data_report\.failed\.md"):
        run_validate(cfg(tmp_path), layout)
    assert layout.data_report_json.read_bytes() == good
    failed = json.loads((tmp_path / "state" / "reports" / "data_report.failed.json").read_text())
    assert failed["status"] == "failed" and failed["errors"] == 1


# -------------------------------------------------------------------------------------------------- split
def test_assign_splits_stratified_deterministic_and_order_independent() -> None:
    rng = random.Random(0)
    keys = [f"text {i}" for i in range(1000)]
    strata = ["pos" if rng.random() < 0.7 else "neg" for _ in keys]
    fractions = {"test": 0.1, "validation": 0.1}
    a = assign_splits(keys, strata, fractions, seed=1)
    assert a == assign_splits(keys, strata, fractions, seed=1)
    order = list(range(1000))
    rng.shuffle(order)
    shuffled = assign_splits([keys[i] for i in order], [strata[i] for i in order], fractions, seed=1)
    assert [shuffled[order.index(i)] for i in range(1000)] == a  # input order does not matter
    assert a != assign_splits(keys, strata, fractions, seed=2)
    for s in ("pos", "neg"):
        counts = Counter(x for x, st in zip(a, strata, strict=True) if st == s)
        total = sum(counts.values())
        assert abs(counts["test"] - 0.1 * total) <= 1 and abs(counts["validation"] - 0.1 * total) <= 1


def test_identical_texts_never_cross_splits(tmp_path: Path) -> None:
    rows = balanced(200)
    rows += [(t.upper() + "  ", y) for t, y in rows[:100]]  # same text after normalisation
    layout = make_layout(tmp_path, rows, docs=50)
    counts = run_split(cfg(tmp_path), layout)
    seen: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for line in layout.split_file("classification", split).read_text().splitlines():
            key = normalise_text(json.loads(line)["text"])
            assert seen.setdefault(key, split) == split
    assert sum(counts["classification"].values()) == 300
    assert counts["classification"]["test"] >= 20 and counts["classification"]["validation"] >= 20
    assert counts["corpus"]["heldout"] >= 1
    # Every corpus sentence lands exactly once (a document may be held out in part: doc_id~k pieces).
    corpus = [json.loads(line) for split in ("train", "heldout")
              for line in layout.split_file("corpus", split).read_text().splitlines()]  # fmt: skip
    assert Counter(s for d in corpus for s in d["sentences"]) == Counter(
        s for i in range(50) for s in (f"Doc {i} one.", "Two.")
    )
    assert layout.split_file("corpus", "heldout").exists()


def test_split_records_keeps_every_record_once() -> None:
    recs = [{"tokens": [str(i)], "tags": ["B-person" if i % 3 else "O"]} for i in range(30)]
    parts = split_records(
        recs,
        key=lambda r: r["tokens"][0],
        stratum=lambda r: r["tags"][0],
        fractions={"test": 0.2, "validation": 0.2},
        seed=3,
    )
    assert sorted(r["tokens"][0] for p in parts.values() for r in p) == sorted(str(i) for i in range(30))
    assert all(parts[name] for name in ("train", "validation", "test"))
