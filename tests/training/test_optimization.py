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


def _graph_step(opt, w, b):
    import tensorflow as tf

    @tf.function
    def step(gw, gb):
        opt.apply_gradients([(gw, w), (gb, b)])

    return step


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_the_fused_adamw_step_is_keras_adamw_step(strategy: str) -> None:
    """Same variables, slots and decay after several steps of the same gradients, eager and in a tf.function,
    outside a distribution strategy and under one (how the loop applies it: in the cross-replica context)."""
    import keras
    import tensorflow as tf

    from bertops.training.optimization import FusedAdamW

    w0 = np.random.default_rng(0).standard_normal((6, 5)).astype("float32")
    scope = (
        tf.distribute.MirroredStrategy(["/cpu:0"]) if strategy == "mirrored" else tf.distribute.get_strategy()
    )
    finals = []
    for cls in (keras.optimizers.AdamW, FusedAdamW):
        with scope.scope():
            w = keras.Variable(w0, name="kernel")
            b = keras.Variable(np.zeros(5, "float32"), name="bias")
            opt = cls(learning_rate=3e-2, weight_decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
            opt.exclude_from_weight_decay(var_list=[b])
            opt.build([w, b])

        step = _graph_step(opt, w, b)

        grads = np.random.default_rng(1).standard_normal((4, 6, 5)).astype("float32")
        for i, g in enumerate(grads):
            gw, gb = tf.constant(g), tf.constant(g[0] * 2)
            if i % 2:
                step(gw, gb)
            else:
                opt.apply_gradients([(gw, w), (gb, b)])
        finals.append([np.array(v) for v in (w, b, opt._momentums[0], opt._velocities[1])])
    for keras_value, fused_value in zip(*finals, strict=True):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-5, atol=1e-6)
    assert np.abs(finals[0][0] - w0).max() > 0.05  # it moved


def test_adamw_is_the_fused_one() -> None:
    from bertops.training.optimization import FusedAdamW, build_optimizer

    assert isinstance(
        build_optimizer(OptimizerConfig(), total_steps=10, model=_tiny_classifier()), FusedAdamW
    )
