"""Tokenizer settings travel with the model: a bundle encodes text exactly as its training records were, in
``load_bundle``, in the MLflow pyfunc the server loads, and a bundle whose settings contradict themselves (or
records built under other settings than params.yaml) is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tests.model.conftest import TINY_VOCAB, tiny_backbone

from bertops.config import validate_config
from bertops.data.finetune import run_finetune_data
from bertops.data.io import write_jsonl
from bertops.data.tokenizer import load_tokenizer
from bertops.paths import MANIFEST, SPLITS, DataLayout

LABELS = ["bad", "good"]
LONG_WORD = "a" * 150  # over the default max_input_chars_per_word=100, under 200
TEXT = f"a good {LONG_WORD} film"
MAX_SEQ = 24


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, dict]:
    """finetune_data built with vocab.max_input_chars_per_word=200 on splits that hold TEXT."""
    layout = DataLayout(tmp_path_factory.mktemp("records") / "data")
    layout.vocab_file.parent.mkdir(parents=True)
    layout.vocab_file.write_text("\n".join([*TINY_VOCAB, "##a"]) + "\n", encoding="utf-8")
    for split in SPLITS:
        write_jsonl(
            layout.split_file("classification", split),
            [{"text": TEXT, "label": "good"}, {"text": "a bad plot", "label": "bad"}] * 2,
        )
        write_jsonl(layout.split_file("ner", split), [{"tokens": ["a", "film"], "tags": ["O", "B-x"]}] * 2)
    cfg = validate_config(
        {
            "project": {"data_dir": str(layout.root)},
            "vocab": {"max_input_chars_per_word": 200},
            "finetune_data": {"max_seq_length": MAX_SEQ},
            "validate": {"labels": None},
        }
    )
    run_finetune_data(cfg, layout)
    manifest = json.loads((layout.finetune_task_dir("classification") / MANIFEST).read_text())
    return layout, manifest


def record_token_ids(layout: DataLayout) -> np.ndarray:
    from bertops.data.records import make_dataset

    ds = make_dataset(layout.finetune_task_dir("classification") / MANIFEST, "test")
    return np.stack([ex["token_ids"].numpy() for ex in ds])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, records: tuple[DataLayout, dict]) -> Path:
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier

    layout, manifest = records
    model = BertClassifier(tiny_backbone(vocab_size=len(TINY_VOCAB) + 1), num_classes=2)
    path = tmp_path_factory.mktemp("bundles") / "clf"
    return save_bundle(
        path,
        model,
        layout.vocab_file,
        "classification",
        MAX_SEQ,
        labels=LABELS,
        tokenizer=manifest["tokenizer"],
    )


def test_a_150_character_word_is_encoded_as_in_the_records(records, bundle_dir: Path) -> None:
    from bertops.model.bundle import load_bundle
    from bertops.model.pyfunc import _python_model

    layout, _ = records
    in_records = record_token_ids(layout)[0]  # TEXT, as the classifier was trained on it
    unk = TINY_VOCAB.index("[UNK]")
    assert unk not in in_records  # the long word became pieces
    meta = json.loads((bundle_dir / "bertops.json").read_text())
    assert meta["tokenizer"]["max_input_chars_per_word"] == 200 and meta["tokenizer"]["truncation"] == "head"

    bundle = load_bundle(bundle_dir)
    np.testing.assert_array_equal(bundle.encode([TEXT], trim=False)["token_ids"][0], in_records)
    # The MLflow pyfunc the server loads (the same class, its load_context on the bundle artifact).
    served = _python_model()
    served.load_context(SimpleNamespace(artifacts={"bundle": str(bundle_dir)}))
    np.testing.assert_array_equal(served.bundle.encode([TEXT], trim=False)["token_ids"][0], in_records)
    frame = served.predict(None, [TEXT])
    np.testing.assert_allclose(
        frame[["prob_bad", "prob_good"]].to_numpy(), bundle.predict_proba([TEXT]), atol=1e-6
    )

    # What serving did before: the default limit turns the word into [UNK], a different input.
    default = load_tokenizer(bundle_dir / "vocab.txt")
    assert unk in default.encode(TEXT, add_special_tokens=False).ids


def test_contradicting_settings_are_refused(records, bundle_dir: Path, tmp_path: Path) -> None:
    from bertops.model.bundle import BundleError, load_bundle, save_bundle
    from bertops.model.heads import BertClassifier

    layout, manifest = records
    model = BertClassifier(tiny_backbone(vocab_size=len(TINY_VOCAB) + 1), num_classes=2)
    with pytest.raises(
        BundleError, match=r"max_seq_length: 24 in the records' tokenizer settings, 16 in this bundle"
    ):
        save_bundle(
            tmp_path / "b",
            model,
            layout.vocab_file,
            "classification",
            16,
            LABELS,
            tokenizer=manifest["tokenizer"],
        )
    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text("\n".join([*TINY_VOCAB, "##a", "extra"]) + "\n", encoding="utf-8")
    with pytest.raises(BundleError, match=r"vocab_sha256"):
        save_bundle(
            tmp_path / "b",
            model,
            other_vocab,
            "classification",
            MAX_SEQ,
            LABELS,
            tokenizer=manifest["tokenizer"],
        )

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    meta = json.loads((copy / "bertops.json").read_text())
    meta["lowercase"] = False
    (copy / "bertops.json").write_text(json.dumps(meta))
    with pytest.raises(
        BundleError, match=r"tokenizer settings do not match \(lowercase: True in bertops\.json"
    ):
        load_bundle(copy)
    shutil.copyfile(other_vocab, copy / "vocab.txt")
    meta["lowercase"] = True
    (copy / "bertops.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"vocab_sha256"):
        load_bundle(copy)


def test_training_refuses_records_built_under_other_settings(records) -> None:
    from bertops.training.trainer import TrainingSetupError, make_plan

    layout, _ = records
    base = {"project": {"data_dir": str(layout.root)}, "finetune": {"init": "scratch", "batch_size": 2}}
    plan = make_plan(validate_config({**base, "vocab": {"max_input_chars_per_word": 200}}), "finetune")
    assert plan.tokenizer["max_input_chars_per_word"] == 200 and plan.labels == LABELS
    with pytest.raises(
        TrainingSetupError, match=r"vocab\.max_input_chars_per_word=100 \(records: 200\).*dvc repro"
    ):
        make_plan(validate_config(base), "finetune")
