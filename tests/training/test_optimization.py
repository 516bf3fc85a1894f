"""BERT's optimiser: the warm-up/decay schedule, weight-decay exclusions, LAMB, loss scaling."""

from __future__ import annotations

import numpy as np
import pytest

from bertops.config import OptimizerConfig


def test_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    from bertops.training.optimization import WarmupLinearDecay, learning_rate_at

    sched = WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=110)
    got = np.array([float(sched(s)) for s in range(0, 111)])
    want = np.array([learning_rate_at(s, 1e-3, 10, 110) for s in range(0, 111)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert got[0] == pytest.approx(1e-4)  # first update already learns
    assert got[9] == pytest.approx(1e-3) and got.max() == pytest.approx(1e-3)
    assert np.all(np.diff(got[:10]) > 0) and np.all(np.diff(got[10:]) < 0)
    assert got[110] == pytest.approx(0.0, abs=1e-12)
    assert WarmupLinearDecay.from_config(sched.get_config()).get_config() == sched.get_config()


def _tiny_classifier():
    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertClassifier

    backbone = BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32)
    return BertClassifier(backbone, num_classes=2)


def test_layer_norm_and_biases_are_not_decayed() -> None:
    from bertops.training.optimization import build_optimizer, no_decay_variables

    model = _tiny_classifier()
    excluded = {v.path for v in no_decay_variables(model)}
    assert any("layer_norm" in p for p in excluded) and any(p.endswith("bias") for p in excluded)
    assert not any(p.endswith("kernel") or p.endswith("embeddings") for p in excluded)
    opt = build_optimizer(OptimizerConfig(weight_decay=0.1), total_steps=100, model=model)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed and decayed.isdisjoint(excluded)
    assert decayed | excluded == {v.path for v in model.trainable_variables}


def test_lamb_and_loss_scaling_build() -> None:
    import keras

    from bertops.training.optimization import build_optimizer

    model = _tiny_classifier()
    lamb = build_optimizer(OptimizerConfig(name="lamb"), total_steps=10, model=model)
    assert isinstance(lamb, keras.optimizers.Lamb)
    scaled = build_optimizer(OptimizerConfig(), total_steps=10, model=model, loss_scaling=True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert float(scaled.scale_loss(1.0)) > 1.0
