"""The model bundle, the SavedModel export and the MLflow pyfunc: round trips and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.model.conftest import TINY_VOCAB, tiny_backbone

LABELS = ["negative", "neutral", "positive"]
TEXTS = [
    "a good film !",
    "the movie was not very good",
    "bad plot",
    "boring",
    "great fun . a very good movie",
]


@pytest.fixture(scope="module")
def classifier():
    from bertops.model.heads import BertClassifier

    return BertClassifier(tiny_backbone(), num_classes=len(LABELS))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, classifier, tiny_vocab) -> Path:
    from bertops.model.bundle import save_bundle

    path = tmp_path_factory.mktemp("bundles") / "clf"
    return save_bundle(
        path, classifier, tiny_vocab, "classification", 24, labels=LABELS, data_version="abc123"
    )


def test_bundle_layout_and_round_trip(bundle_dir, classifier, tiny_vocab) -> None:
    from bertops.data.tokenizer import encode_texts, load_tokenizer
    from bertops.model.bundle import load_bundle

    assert {p.name for p in bundle_dir.iterdir()} == {
        "model.keras",
        "vocab.txt",
        "label_map.json",
        "bertops.json",
    }
    meta = json.loads((bundle_dir / "bertops.json").read_text())
    assert (
        meta["task"] == "classification" and meta["max_seq_length"] == 24 and meta["data_version"] == "abc123"
    )
    assert meta["model"]["num_layers"] == 2 and meta["model"]["num_classes"] == 3
    assert json.loads((bundle_dir / "label_map.json").read_text()) == {"labels": LABELS}
    bundle = load_bundle(bundle_dir)
    probs = bundle.predict_proba(TEXTS, batch_size=2)
    # Reference: the original Keras model on full-length (untrimmed) padded inputs.
    full = encode_texts(load_tokenizer(tiny_vocab), TEXTS, 24)
    logits = np.asarray(classifier(full, training=False))
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1)


def test_bundle_errors_name_the_problem(tmp_path, classifier, tiny_vocab, bundle_dir) -> None:
    import shutil

    from bertops.model.bundle import BundleError, load_bundle, save_bundle

    with pytest.raises(BundleError, match="labels has 2 entries but the model has num_classes=3"):
        save_bundle(tmp_path / "b", classifier, tiny_vocab, "classification", 24, labels=["a", "b"])
    with pytest.raises(BundleError, match="exceeds the model's max_sequence_length=32"):
        save_bundle(tmp_path / "b", classifier, tiny_vocab, "classification", 64, labels=LABELS)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "label_map.json").write_text(json.dumps({"labels": ["x", "y"]}))
    with pytest.raises(
        BundleError, match=r"label_map\.json lists 2 labels but model\.keras has num_classes=3"
    ):
        load_bundle(broken)
    (broken / "model.keras").unlink()
    with pytest.raises(BundleError, match=r"missing model\.keras"):
        load_bundle(broken)
    with pytest.raises(BundleError, match=r"bertops\.json is missing"):
        load_bundle(tmp_path)


def test_saving_over_a_bundle_replaces_it_atomically(tmp_path, classifier, tiny_vocab) -> None:
    from bertops.model.bundle import BundleError, read_meta, save_bundle

    path = save_bundle(tmp_path / "b", classifier, tiny_vocab, "classification", 16, labels=LABELS)
    save_bundle(path, classifier, tiny_vocab, "classification", 20, labels=LABELS)
    assert read_meta(path)["max_seq_length"] == 20
    with pytest.raises(BundleError):  # a failing save leaves the previous bundle untouched
        save_bundle(path, classifier, tiny_vocab, "classification", 20, labels=["one"])
    assert read_meta(path)["max_seq_length"] == 20 and (path / "model.keras").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_saved_model_serving_signature_matches_keras(tmp_path, bundle_dir, classifier) -> None:
    import tensorflow as tf

    from bertops.model.bundle import load_bundle
    from bertops.model.export import export_saved_model

    out = export_saved_model(bundle_dir, tmp_path / "export" / "1")
    assert (
        (out / "saved_model.pb").is_file()
        and (out / "vocab.txt").is_file()
        and (out / "label_map.json").is_file()
    )
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["padding_mask", "segment_ids", "token_ids"]
    batch = load_bundle(bundle_dir).encode(TEXTS, trim=False)
    result = serve(**{k: tf.constant(v) for k, v in batch.items()})
    logits = np.asarray(classifier(batch, training=False))
    np.testing.assert_allclose(result["logits"].numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(result["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)


def test_texts_from_input_forms_and_errors() -> None:
    import pandas as pd

    from bertops.model.pyfunc import probabilities_frame, texts_from_input

    assert texts_from_input(["a", "b"]) == ["a", "b"]
    assert texts_from_input(pd.DataFrame({"text": ["a"]})) == ["a"]
    assert texts_from_input(pd.DataFrame({"review": ["a", "b"]})) == ["a", "b"]
    assert texts_from_input({"text": ["a"]}) == ["a"]
    with pytest.raises(ValueError, match="row 1: expected a string"):
        texts_from_input(["a", 3])
    with pytest.raises(ValueError, match="one-column DataFrame"):
        texts_from_input(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    frame = probabilities_frame([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]], LABELS)
    assert list(frame.columns) == ["label", "probability", "prob_negative", "prob_neutral", "prob_positive"]
    assert frame["label"].tolist() == ["positive", "negative"] and frame["probability"].tolist() == [0.5, 0.7]


@pytest.mark.slow
def test_pyfunc_round_trip_in_a_fresh_process(tmp_path, bundle_dir) -> None:
    """Log with the real MLflow client (SQLite store), load and predict in a separate Python process."""
    import mlflow

    from bertops.model.bundle import load_bundle
    from bertops.model.pyfunc import log_classifier

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bertops-model-tests")
    with mlflow.start_run():
        info = log_classifier(bundle_dir, name="model", input_example=TEXTS[:2])
    assert [c.type.name for c in info.signature.inputs.inputs] == ["string"]
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged")))
    assert (local / "artifacts" / "bundle" / "model.keras").is_file()
    pins = (local / "requirements.txt").read_text().split()
    assert any(p.startswith("tensorflow-cpu==") for p in pins) and any(
        p.startswith("tokenizers==") for p in pins
    )

    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "a = m.predict(json.loads(sys.argv[2]))\n"
        "b = m.predict(pd.DataFrame({'text': json.loads(sys.argv[2])}))\n"
        "assert a.equals(b)\n"
        "print(a.to_json(orient='records'))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [sys.executable, "-c", script, info.model_uri, json.dumps(TEXTS)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = load_bundle(bundle_dir).predict_proba(TEXTS)
    assert [r["label"] for r in rows] == [LABELS[i] for i in expected.argmax(1)]
    for row, p in zip(rows, expected, strict=True):
        assert set(row) == {"label", "probability", "prob_negative", "prob_neutral", "prob_positive"}
        np.testing.assert_allclose([row[f"prob_{lab}"] for lab in LABELS], p, atol=1e-5)
        assert row["probability"] == pytest.approx(p.max(), abs=1e-5)
    assert len(TINY_VOCAB) == 20
