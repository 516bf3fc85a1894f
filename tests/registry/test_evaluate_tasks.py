"""Evaluation of NER and pretraining bundles: real tiny Keras models, hand-computed metrics, mismatched data.

- NER: a ``BertTokenClassifier`` whose output layer is set to predict ``B-PER`` at every position gives metrics
  that are computed by hand below (including a two-piece word and words truncated away); an untrained model's
  evaluation is compared with metrics computed from its own ``predict_proba`` on raw text.
- Pretraining: an untrained ``BertPretrainer`` on synthetic held-out records (the training tests' generator);
  the evaluation's MLM/NSP metrics are compared with numpy metrics of the model's own outputs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tests.registry.conftest import build_bundle, write_jsonl
from tests.training.conftest import PREDS, SEQ, VOCAB, pretraining_features

from bertops.config import EvaluationConfig
from bertops.data.records import make_manifest, write_records
from bertops.evaluation.errors import EvaluationError, LabelMapMismatch
from bertops.evaluation.evaluate import default_output_dir, evaluate
from bertops.evaluation.metrics import masked_lm_metrics, ner_metrics
from bertops.evaluation.ner import evaluate_ner
from bertops.evaluation.pretraining import evaluate_pretraining
from bertops.paths import MANIFEST, DataLayout

pytestmark = pytest.mark.slow
CFG = EvaluationConfig(worst_examples=3)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NER_WORDS = ["alice", "bob", "paris", "london", "new", "york", "##shire", "lives", "in", "and", "visited",
             "the", "city"]  # fmt: skip
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # the data stage's order: O, then B-/I- per sorted type
NER_MAX_SEQ = 8  # [CLS] + 6 pieces + [SEP]

# Hand-checked case: "yorkshire" is two pieces (york ##shire); the last row has 8 one-piece words, of which
# only the first 6 fit: "london" and "bob" are truncated away and count as predicted O.
NER_ROWS = [
    {"tokens": ["alice", "lives", "in", "paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
    {"tokens": ["bob", "visited", "new", "york"], "tags": ["B-PER", "O", "B-LOC", "I-LOC"]},
    {"tokens": ["alice", "bob", "visited", "yorkshire"], "tags": ["B-PER", "I-PER", "O", "B-LOC"]},
    {"tokens": ["the", "city", "and", "the", "city", "and", "london", "bob"],
     "tags": ["O", "O", "O", "O", "O", "O", "B-LOC", "B-PER"]},
]  # fmt: skip


def build_ner_bundle(path: Path, seed: int, constant: str | None = None, max_seq: int = NER_MAX_SEQ) -> Path:
    """A tiny ``BertTokenClassifier`` bundle; ``constant`` sets the output layer to predict that tag everywhere."""
    import keras

    from bertops.model.backbone import BertBackbone
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertTokenClassifier

    vocab = path.parent / f"{path.name}-vocab.txt"
    vocab.write_text("\n".join(SPECIAL + NER_WORDS) + "\n", encoding="utf-8")
    keras.utils.set_random_seed(seed)
    backbone = BertBackbone(
        vocabulary_size=len(SPECIAL + NER_WORDS), num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64, dropout=0.0, max_sequence_length=16,
    )  # fmt: skip
    model = BertTokenClassifier(backbone, num_classes=len(TAGS), dropout=0.0)
    if constant is not None:
        kernel, bias = model.output_dense.get_weights()
        bias = np.zeros_like(bias)
        bias[TAGS.index(constant)] = 10.0
        model.output_dense.set_weights([np.zeros_like(kernel), bias])
    return save_bundle(path, model, vocab_file=vocab, task="ner", max_seq_length=max_seq, labels=TAGS)


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ner-eval")
    write_jsonl(root / "data" / "split" / "ner" / "test.jsonl", NER_ROWS)
    return root


@pytest.fixture(scope="module")
def per_bundle(ner_dir: Path) -> Path:
    return build_ner_bundle(ner_dir / "per-bundle", seed=3, constant="B-PER")


def test_ner_metrics_by_hand_first_piece_alignment_and_truncation(
    per_bundle: Path, ner_dir: Path, tmp_path: Path
) -> None:
    test_file = ner_dir / "data" / "split" / "ner" / "test.jsonl"
    out = tmp_path / "evaluation-ner"
    result = evaluate_ner(per_bundle, test_file, CFG, output_dir=out)
    m = result.metrics
    assert (
        result.task == "ner" and result.labels == TAGS and result.output_dir == out and result.run_id is None
    )
    # Every word the model sees is its own B-PER span: 4 + 4 + 4 (yorkshire is one word, two pieces) + 6.
    # Gold spans: PER (0,1) (0,1) (0,2) (7,8); LOC (3,4) (2,4) (3,4) (6,7). Exact matches: PER (0,1) twice.
    p, r = 2 / 18, 2 / 8
    assert m["num_predicted_entities"] == 18 and m["num_entities"] == 8
    assert m["entity_precision"] == pytest.approx(p) and m["entity_recall"] == pytest.approx(r)
    assert m["entity_f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["precision_PER"] == pytest.approx(2 / 18) and m["recall_PER"] == pytest.approx(2 / 4)
    assert m["precision_LOC"] == 0.0 and m["recall_LOC"] == 0.0 and m["f1_LOC"] == 0.0
    assert m["support_PER"] == 4 and m["support_LOC"] == 4
    # Words tagged right: the first B-PER of rows 1-3; truncated words (predicted O) are wrong too.
    assert m["token_accuracy"] == pytest.approx(3 / 20) and m["num_tokens"] == 20
    assert m["words_truncated"] == 2 and m["num_sentences"] == 4

    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(m)
    with (out / "entity_types.csv").open() as fh:
        types = list(csv.DictReader(fh))
    assert [t["type"] for t in types] == ["LOC", "PER"]
    assert float(types[1]["recall"]) == pytest.approx(0.5) and types[0]["support"] == "4"
    with (out / "predictions.csv").open() as fh:
        words = list(csv.DictReader(fh))
    assert len(words) == 20 and words[-1] == {"actual": "B-PER", "predicted": "O"}
    assert words[11] == {"actual": "B-LOC", "predicted": "B-PER"}  # yorkshire: one prediction for two pieces
    table = (out / "metrics_table.md").read_text()
    assert "| entity_f1 |" in table and "| PER | 0.1111 | 0.5000 |" in table
    errors = [json.loads(x) for x in (out / "entity_errors.jsonl").read_text().splitlines()]
    assert len(errors) == 3 and errors[0]["index"] == 3  # most span errors: 6 spurious + 2 missed
    assert {"type": "LOC", "start": 6, "end": 7, "text": "london"} in errors[0]["missed"]


def test_ner_evaluation_matches_metrics_of_the_models_own_predictions(ner_dir: Path, tmp_path: Path) -> None:
    """An untrained model (varied predictions): evaluate_ner's word alignment agrees with predict_proba on the
    joined text, read at each word's first piece (offsets counted here from each word's own pieces)."""
    from bertops.model.bundle import load_bundle

    bundle_dir = build_ner_bundle(ner_dir / "random-bundle", seed=11, max_seq=16)
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    words = [w for w in NER_WORDS if not w.startswith("##")] + ["yorkshire", "newshire"]  # two pieces each
    rows = []
    for _ in range(25):
        n = int(rng.integers(1, 7))
        rows.append({"tokens": list(rng.choice(words, n)), "tags": [str(t) for t in rng.choice(TAGS, n)]})
    test_file = write_jsonl(tmp_path / "test.jsonl", rows)
    result = evaluate_ner(bundle_dir, test_file, CFG, batch_size=8)  # several batches, trimmed widths

    probs = bundle.predict_proba([" ".join(r["tokens"]) for r in rows])
    pred = []
    for i, r in enumerate(rows):
        sizes = [len(bundle.tokenizer.encode(w, add_special_tokens=False).ids) for w in r["tokens"]]
        first = 1 + np.cumsum([0, *sizes[:-1]])
        pred.append([TAGS[k] for k in probs[i, first].argmax(-1)])
    assert any(
        len(bundle.tokenizer.encode(w, add_special_tokens=False).ids) == 2 for r in rows for w in r["tokens"]
    )
    assert len({t for p in pred for t in p}) > 1, "the check needs a model whose predictions vary"
    expected = ner_metrics([r["tags"] for r in rows], pred)
    extra = ("words_", "all_o_", "latency_")
    assert {k: v for k, v in result.metrics.items() if not k.startswith(extra)} == pytest.approx(expected)
    assert result.metrics["words_truncated"] == 0
    # The all-O baseline, measured on the same words: no entity found, every O word right.
    all_o = ner_metrics([r["tags"] for r in rows], [["O"] * len(r["tags"]) for r in rows])
    assert result.metrics["all_o_entity_f1"] == all_o["entity_f1"] == 0.0
    assert result.metrics["all_o_token_accuracy"] == pytest.approx(all_o["token_accuracy"])
    assert result.metrics["latency_p50_ms_batch1"] > 0


def test_ner_tag_set_mismatch_and_wrong_task_are_rejected_outputs_untouched(
    per_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "evaluation-ner"
    out.mkdir()
    (out / "metrics.json").write_text('{"entity_f1": 0.5}\n')
    bad = write_jsonl(
        tmp_path / "test.jsonl", [NER_ROWS[0], {"tokens": ["acme", "inc"], "tags": ["B-ORG", "I-ORG"]}]
    )
    with pytest.raises(
        LabelMapMismatch,
        match=r"test.jsonl, row 2, field 'tags': tag 'B-ORG' \(word 1\) is not in the label map",
    ):
        evaluate_ner(per_bundle, bad, CFG, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == '{"entity_f1": 0.5}\n'

    clf = build_bundle(tmp_path / "clf-bundle", None, seed=1)
    with pytest.raises(
        EvaluationError, match="'classification' bundle cannot be evaluated as a token classifier"
    ):
        evaluate_ner(clf, tmp_path / "test.jsonl", CFG)
    with pytest.raises(EvaluationError, match="reads the split JSONL"):
        evaluate_ner(per_bundle, tmp_path / "test.tfrecord", CFG)


def test_ner_evaluation_logs_an_mlflow_run(per_bundle: Path, ner_dir: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("eval-ner", artifact_location=(tmp_path / "artifacts").as_uri())
    result = evaluate(
        per_bundle, None, CFG, layout=DataLayout(ner_dir / "data"), tracking_uri=uri, experiment="eval-ner",
        tags={"bertops.airflow_run_id": "manual-1"},
    )  # fmt: skip
    assert result.task == "ner" and result.run_id and result.output_dir is None
    run = client.get_run(result.run_id)
    assert run.data.metrics["entity_f1"] == pytest.approx(result.metrics["entity_f1"])
    assert run.data.metrics["f1_PER"] == pytest.approx(result.metrics["f1_PER"])
    assert run.data.params["task"] == "ner" and run.data.params["labels"] == ",".join(TAGS)
    assert run.data.tags["bertops.test_data_sha256"] == result.test_sha256
    assert run.data.tags["bertops.airflow_run_id"] == "manual-1"
    logged = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/entity_types.csv", "evaluation/metrics.json", "evaluation/predictions.csv"} <= logged


# ------------------------------------------------------------------------------------------------ pretraining
def write_heldout(root: Path, n: int, seed: int, **manifest_overrides: object) -> tuple[Path, dict]:
    """Held-out pretraining records + manifest (the data step's writer); returns the manifest path and features."""
    features = pretraining_features(n, np.random.default_rng(seed))
    (root / "heldout").mkdir(parents=True, exist_ok=True)
    write_records(root / "heldout" / "shard-00000.tfrecord", features)
    manifest = make_manifest(
        "pretraining", max_seq_length=SEQ, max_predictions_per_seq=PREDS, vocab_size=len(VOCAB),
        num_examples={"heldout": n}, files={"heldout": ["heldout/shard-00000.tfrecord"]},
    )  # fmt: skip
    manifest.update(manifest_overrides)
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return root / MANIFEST, features


@pytest.fixture(scope="module")
def pretrain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from bertops.model.backbone import BertBackbone
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertPretrainer

    root = tmp_path_factory.mktemp("pretrain-eval")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    keras.utils.set_random_seed(5)
    backbone = BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
        dropout=0.0, max_sequence_length=SEQ,
    )  # fmt: skip
    return save_bundle(root / "bundle", BertPretrainer(backbone), vocab_file=vocab, task="pretraining",
                       max_seq_length=SEQ)  # fmt: skip


def _expected(model: object, features: dict, n: int) -> dict[str, float]:
    """MLM metrics (numpy, metrics.masked_lm_metrics) and NSP accuracy of the model's own outputs."""
    names = ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")
    out = model({k: features[k][:n].astype("int32") for k in names}, training=False)
    m = masked_lm_metrics(np.asarray(out["mlm_logits"]), features["masked_lm_ids"][:n],
                          features["masked_lm_weights"][:n])  # fmt: skip
    nsp = np.asarray(out["nsp_logits"]).argmax(-1) == features["next_sentence_label"][:n, 0]
    return {**m, "nsp_accuracy": float(nsp.mean()), "num_examples": float(n),
            "num_masked_tokens": float(features["masked_lm_weights"][:n].sum())}  # fmt: skip


def test_pretraining_metrics_match_the_models_own_outputs(pretrain_bundle: Path, tmp_path: Path) -> None:
    from bertops.model.bundle import load_bundle

    model = load_bundle(pretrain_bundle).model
    manifest, features = write_heldout(tmp_path / "pretrain", 40, seed=1)
    out = tmp_path / "evaluation-pretraining"
    full = evaluate_pretraining(pretrain_bundle, manifest.parent, CFG, batch_size=16, output_dir=out)
    expected = _expected(model, features, 40)
    assert {k: full.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-4)
    assert full.metrics["perplexity"] == pytest.approx(math.exp(full.metrics["mlm_loss"]))
    assert full.metrics["nsp_loss"] > 0 and full.task == "pretraining"
    assert 40 < full.metrics["perplexity"] < 250  # untrained over a 100-token vocabulary: about uniform
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(full.metrics)
    assert "| mlm_accuracy |" in (out / "metrics_table.md").read_text()

    first = evaluate_pretraining(pretrain_bundle, manifest, CFG, batch_size=8, max_batches=2)
    expected = _expected(model, features, 16)
    assert first.metrics["num_examples"] == 16
    assert {k: first.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-4)
    assert first.output_dir is None and first.test_sha256 == full.test_sha256


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_seq_length": 24}, r"manifest.json, field 'max_seq_length': the records have max_seq_length=24 "
                                 r"but the model .* max_seq_length=32"),
        ({"vocab_size": 30522}, r"manifest.json, field 'vocab_size': .* 30522 tokens .* vocabulary_size=100"),
        ({"kind": "ner"}, r"manifest.json, field 'kind': 'ner' records, expected 'pretraining'"),
        ({"num_examples": {"heldout": 0}}, r"field 'num_examples': split 'heldout' has no examples"),
        ({"files": {"train": []}}, r"no split 'heldout'"),
    ],
)  # fmt: skip
def test_pretraining_records_that_do_not_fit_the_model_are_rejected(
    pretrain_bundle: Path, tmp_path: Path, override: dict, message: str
) -> None:
    manifest, _ = write_heldout(tmp_path / "pretrain", 4, seed=2, **override)
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match=message):
        evaluate_pretraining(pretrain_bundle, manifest, CFG, output_dir=out)
    assert not out.exists()


def test_pretraining_token_ids_outside_the_vocabulary_are_rejected(
    pretrain_bundle: Path, tmp_path: Path
) -> None:
    manifest, features = write_heldout(tmp_path / "pretrain", 4, seed=3)
    features["token_ids"][2, 5] = 150  # the manifest claims the model's 100 tokens
    write_records(manifest.parent / "heldout" / "shard-00000.tfrecord", features)
    with pytest.raises(
        EvaluationError, match=r"shard-00000.tfrecord, feature 'token_ids': .*outside \[0, 100\)"
    ):
        evaluate_pretraining(pretrain_bundle, manifest, CFG)


def test_cli_evaluates_ner_and_pretraining_bundles_from_the_data_layout(
    per_bundle: Path, pretrain_bundle: Path, ner_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from bertops.cli import app

    data = tmp_path / "data"
    write_jsonl(data / "split" / "ner" / "test.jsonl", NER_ROWS)
    write_heldout(data / "pretrain", 24, seed=4)
    base = tmp_path / "evaluation"
    common = ["--params", str(Path(__file__).parents[2] / "params.yaml"), "--no-log",
              "--set", f"project.data_dir={data}", "--set", f"evaluation.output_dir={base}"]  # fmt: skip
    runner = CliRunner()
    ner = runner.invoke(app, ["evaluate", "--model", str(per_bundle), *common])
    assert ner.exit_code == 0, ner.output
    assert "entity_f1" in ner.stdout and default_output_dir(base, "ner") == tmp_path / "evaluation-ner"
    assert json.loads((tmp_path / "evaluation-ner" / "metrics.json").read_text())["num_tokens"] == 20
    pre = runner.invoke(app, ["evaluate", "--model", str(pretrain_bundle), "--max-batches", "1",
                              "--batch-size", "8", *common])  # fmt: skip
    assert pre.exit_code == 0, pre.output
    assert json.loads((tmp_path / "evaluation-pretraining" / "metrics.json").read_text())["num_examples"] == 8
    assert not base.exists()  # the classification report (DVC metrics) is not replaced by other tasks
    clf = build_bundle(tmp_path / "clf-bundle", None, seed=1)
    write_jsonl(
        data / "split" / "classification" / "test.jsonl",
        [{"text": "good film", "label": "positive"}, {"text": "dull plot", "label": "negative"}],
    )
    ok = runner.invoke(
        app, ["evaluate", "--model", str(clf), *common, "--set", "evaluation.latency_repeats=1"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((base / "metrics.json").read_text())["num_examples"] == 2
    assert (tmp_path / "evaluation-ner" / "entity_types.csv").is_file()

    (data / "split" / "ner" / "test.jsonl").write_text(
        json.dumps({"tokens": ["x"], "tags": ["B-ORG"]}) + "\n"
    )
    bad = runner.invoke(app, ["evaluate", "--model", str(per_bundle), *common])
    assert bad.exit_code == 1 and "'B-ORG'" in bad.output
