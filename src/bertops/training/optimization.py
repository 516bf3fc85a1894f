"""BERT's optimisation recipe on Keras 3: AdamW (or LAMB) with linear warm-up then linear decay to zero.

Weight decay skips LayerNorm parameters and every bias, as in the original BERT (``exclude_from_weight_decay``).
Gradient clipping (by global norm) and gradient accumulation are done by the train step
(:mod:`bertops.training.loop`), after the cross-worker all-reduce, so that they see the global gradient::

    schedule = WarmupLinearDecay(peak_learning_rate=1e-4, warmup_steps=100, total_steps=1000)
    optimizer = build_optimizer(cfg.finetune.optimizer, total_steps=1000, model=model)
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from bertops.config import OptimizerConfig


def warmup_steps_for(opt_cfg: OptimizerConfig, total_steps: int) -> int:
    """Warm-up length in optimizer steps: ``warmup_fraction`` of the run, rounded up (0 stays 0)."""
    return math.ceil(opt_cfg.warmup_fraction * total_steps)


def learning_rate_at(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """The schedule in plain Python (for logging and tests): linear 0 -> peak, then linear peak -> 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    return peak * max(0.0, 1.0 - (step - warmup_steps) / remaining)


@keras.saving.register_keras_serializable(package="bertops")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak_learning_rate`` over ``warmup_steps``, then linear decay to 0 at
    ``total_steps``. ``step`` is 0-based; the first step already has a non-zero rate (peak / warmup_steps)."""

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int) -> None:
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        remaining = float(max(self.total_steps - self.warmup_steps, 1))
        decay_lr = peak * ops.maximum(0.0, 1.0 - (step - float(self.warmup_steps)) / remaining)
        if self.warmup_steps == 0:
            return decay_lr
        warmup_lr = peak * (step + 1.0) / float(self.warmup_steps)
        return ops.where(step < float(self.warmup_steps), warmup_lr, decay_lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def no_decay_variables(model: keras.Model) -> list[Any]:
    """The variables BERT does not decay: every LayerNormalization parameter and every bias."""
    excluded: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.LayerNormalization):
            for v in layer.trainable_variables:
                excluded[id(v)] = v
    for v in model.trainable_variables:
        if v.name.endswith("bias"):
            excluded[id(v)] = v
    return list(excluded.values())


@keras.saving.register_keras_serializable(package="bertops")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras' AdamW with each variable's Adam update in one TensorFlow kernel (``ResourceApplyAdam``).

    Keras' ``update_step`` spells the update out in about ten element-wise ops per variable (each a pass over
    the variable and a kernel launch): 30% of the tiny model's step op time, profiled
    (``benchmarks/profile_step.py``). ``ResourceApplyAdam`` computes the same update (``m``, ``v``, then
    ``var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)``) in one multi-threaded pass. The
    slots, the decoupled weight decay (applied before, by Keras, skipping the excluded variables) and the
    schedule are Keras'. Other backends, sparse gradients and ``amsgrad`` take Keras' own update."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow" or self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def build_optimizer(
    opt_cfg: OptimizerConfig,
    total_steps: int,
    model: keras.Model,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """AdamW or LAMB on the warm-up/decay schedule, with LayerNorm and biases excluded from weight decay.

    ``total_steps`` counts optimizer updates (after gradient accumulation). With ``loss_scaling`` (float16
    compute) the optimizer is wrapped in ``keras.optimizers.LossScaleOptimizer`` (dynamic loss scale).
    Call under the distribution strategy's scope so that its slots are mirrored like the model's variables.
    """
    schedule = WarmupLinearDecay(opt_cfg.learning_rate, warmup_steps_for(opt_cfg, total_steps), total_steps)
    common: dict[str, Any] = {
        "learning_rate": schedule,
        "beta_1": opt_cfg.beta_1,
        "beta_2": opt_cfg.beta_2,
        "epsilon": opt_cfg.epsilon,
        "weight_decay": opt_cfg.weight_decay or None,
    }
    if opt_cfg.name == "adamw":
        optimizer: keras.optimizers.Optimizer = FusedAdamW(**common)
    elif opt_cfg.name == "lamb":
        optimizer = keras.optimizers.Lamb(**common)
    else:  # pragma: no cover - the config's Literal already refuses other names
        raise ValueError(f"optimizer.name={opt_cfg.name!r} is not one of adamw, lamb")
    if opt_cfg.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    optimizer.build(model.trainable_variables)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return optimizer


def apply_loss_scaled(optimizer: Any, grads: list[Any], variables: list[Any], clip_norm: float) -> Any:
    """One update from gradients of the *scaled* loss (float16 compute); returns their unscaled global norm.

    ``LossScaleOptimizer.apply_gradients`` refuses the cross-replica context the loop updates in (after its own
    all-reduce), so its logic is spelled out here on its state: unscale by ``dynamic_scale``, clip, and apply
    with the inner optimizer only when every gradient is finite, doubling the scale after
    ``dynamic_growth_steps`` finite steps; a non-finite step is skipped and halves the scale.
    """
    import tensorflow as tf

    scale = optimizer.dynamic_scale
    grads = [g / tf.cast(scale, g.dtype) for g in grads]
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    clipped, norm = tf.clip_by_global_norm(grads, clip_norm)

    def apply() -> Any:
        optimizer.inner_optimizer.apply_gradients(zip(clipped, variables, strict=True))
        grow = tf.equal(optimizer.step_counter, optimizer.dynamic_growth_steps - 1)
        scale.assign(tf.where(grow, scale * 2.0, scale))
        optimizer.step_counter.assign(
            tf.where(grow, tf.zeros_like(optimizer.step_counter), optimizer.step_counter + 1)
        )
        return tf.constant(True)

    def skip() -> Any:
        scale.assign(scale * 0.5)
        optimizer.step_counter.assign(tf.zeros_like(optimizer.step_counter))
        return tf.constant(False)

    tf.cond(finite, apply, skip)
    return norm
