"""What was trained is stated from the things themselves: a MiniLM init is 6 layers / hidden 384 whatever
``model.preset`` says, in the retrain plan, the training run's record and the model card."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.model.conftest import TINY_VOCAB, tiny_backbone

from bertops.config import BertopsConfig
from bertops.model.lineage import describe, planned_architecture, trained_record, tree_sha256
from bertops.registry.model_card import ModelCardInfo, render_model_card


def test_a_checkpoint_init_plans_the_checkpoints_architecture(minilm_dir: Path) -> None:
    cfg = BertopsConfig()
    assert cfg.model.preset == "tiny"
    arch = planned_architecture(cfg.model, vocab_size=8000, init=f"hf:{minilm_dir}")
    assert (arch.num_layers, arch.hidden_dim, arch.num_heads, arch.intermediate_dim) == (6, 384, 12, 1536)
    assert arch.vocabulary_size == 30522
    assert describe(arch).startswith(
        "6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary 30,522, 22."
    )
    scratch = planned_architecture(cfg.model, vocab_size=8000, init="scratch")
    assert scratch.vocabulary_size == 8000 and scratch.num_layers != 6


def test_the_retrain_plan_names_the_checkpoints_architecture(minilm_dir: Path, tmp_path: Path) -> None:
    from bertops.orchestration.tasks import _planned_model

    cfg = BertopsConfig()
    cfg.finetune.init = f"hf:{minilm_dir}"
    _, line = _planned_model(cfg, tmp_path)
    assert line.startswith("6 layers, hidden 384") and str(minilm_dir) in line
    cfg.finetune.init = "hf:does/not/exist"
    _, line = _planned_model(cfg, tmp_path)
    assert line.startswith("unknown until the checkpoint is read") and "does/not/exist" in line


def test_trained_record_is_read_back_from_the_bundle(tmp_path: Path, tiny_vocab: Path) -> None:
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier

    init_dir = tmp_path / "init"
    init_dir.mkdir()
    (init_dir / "weights.bin").write_bytes(b"weights")
    bundle = save_bundle(tmp_path / "clf", BertClassifier(tiny_backbone(), num_classes=2), tiny_vocab,
                         "classification", 24, labels=["neg", "pos"])  # fmt: skip
    record = trained_record(bundle, f"bundle:{init_dir}")
    assert (record["num_layers"], record["hidden_dim"], record["num_heads"]) == (2, 16, 2)
    assert record["vocabulary_size"] == len(TINY_VOCAB) and record["num_classes"] == 2
    assert record["init_sha256"] == tree_sha256(init_dir)
    assert record["tokenizer"]["max_seq_length"] == 24 and record["tokenizer"]["lowercase"] is True
    (init_dir / "weights.bin").write_bytes(b"other weights")
    assert tree_sha256(init_dir) != record["init_sha256"]  # the hash is of the content
    card = render_model_card(ModelCardInfo(name="m", version="1", trained=record))
    assert "## What was trained" in card and record["architecture"] in card and record["init_sha256"] in card
    assert "max_seq_length `24`" in card


@pytest.mark.parametrize("init", ["scratch", "pretrained"])
def test_no_checkpoint_no_hash(tmp_path: Path, tiny_vocab: Path, init: str) -> None:
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier

    bundle = save_bundle(tmp_path / "clf", BertClassifier(tiny_backbone(), num_classes=2), tiny_vocab,
                         "classification", 24, labels=["neg", "pos"])  # fmt: skip
    assert trained_record(bundle, init)["init_sha256"] is None
