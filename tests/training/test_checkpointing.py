"""The checkpoint directory: model, optimizer and loop state round-trip; mismatches name the variable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertops.config import OptimizerConfig


def _model_and_optimizer(hidden: int = 16):
    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertClassifier
    from bertops.training.optimization import build_optimizer

    backbone = BertBackbone(
        vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=hidden, intermediate_dim=32
    )
    model = BertClassifier(backbone, num_classes=2)
    return model, build_optimizer(OptimizerConfig(), total_steps=10, model=model)


def test_round_trip_restores_weights_optimizer_and_state(tmp_path: Path) -> None:
    from bertops.training.checkpointing import LoopState, load_checkpoint, save_checkpoint

    model, opt = _model_and_optimizer()
    for v in opt.variables:  # non-trivial optimizer state
        v.assign(np.random.default_rng(0).normal(size=v.shape).astype(v.dtype))
    state = LoopState(step=7, epoch=1, best_metric=0.8, best_step=5, bad_evals=1, last_eval={"accuracy": 0.7})
    save_checkpoint(tmp_path, model, opt, state)

    model2, opt2 = _model_and_optimizer()
    restored = load_checkpoint(tmp_path, model2, opt2)
    assert restored == state
    for a, b in zip(model.weights, model2.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(opt.variables, opt2.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_checkpoint_names_the_variable(tmp_path: Path) -> None:
    from bertops.training.checkpointing import (
        CheckpointMismatchError,
        LoopState,
        load_checkpoint,
        save_checkpoint,
    )

    model, opt = _model_and_optimizer(hidden=16)
    save_checkpoint(tmp_path, model, opt, LoopState(step=1))
    other, other_opt = _model_and_optimizer(hidden=32)
    with pytest.raises(CheckpointMismatchError, match="token_embedding"):
        load_checkpoint(tmp_path, other, other_opt)
    (tmp_path / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"state\.json"):
        load_checkpoint(tmp_path, model, opt)
