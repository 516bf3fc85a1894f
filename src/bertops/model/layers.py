"""The building blocks of BERT as Keras 3 layers: position embedding, self-attention, encoder block.

Each layer follows keras-hub's contract: named sublayers, ``**kwargs`` passed to ``Layer``, ``get_config()``
returning exactly the constructor arguments, registered for ``.keras`` (de)serialisation.

Mixed precision: layers compute in the policy's compute dtype (bfloat16/float16 under ``mixed_*``), but the
attention softmax and every LayerNorm run in float32 (their inputs are cast up, their outputs cast back), as
the original BERT mixed-precision recipes do; variables are always float32.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "bertops"
# Added to attention scores at padded key positions before the softmax (in float32, so no overflow).
MASK_BIAS = -1e9


def bert_initializer(stddev: float = 0.02) -> keras.initializers.Initializer:
    """BERT's weight initialiser: truncated normal with a small standard deviation."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


def float32_layer_norm(epsilon: float, name: str) -> keras.layers.LayerNormalization:
    """A LayerNorm that always computes in float32, whatever the surrounding dtype policy."""
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype="float32", name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embeddings: ``(B, T, H)`` input -> ``(B, T, H)`` embeddings of positions 0..T-1."""

    def __init__(self, sequence_length: int, initializer_range: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer_range = initializer_range

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=bert_initializer(self.initializer_range),
        )

    def call(self, inputs: Any) -> Any:
        length = ops.shape(inputs)[1]
        table = ops.cast(self.embeddings[:length], self.compute_dtype)  # (T, H)
        return ops.broadcast_to(table[None], ops.shape(inputs))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(sequence_length=self.sequence_length, initializer_range=self.initializer_range)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head scaled dot-product self-attention with a key padding mask.

    One fused ``qkv`` projection (``H -> 3H``, laid out ``[q | k | v]``, each split into heads) replaces three
    matmuls: on CPU one larger GEMM is faster than three small ones. The softmax runs in float32.
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        dropout: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.head_dim = hidden_dim // num_heads
        init = bert_initializer(initializer_range)
        self.qkv_dense = keras.layers.Dense(
            3 * hidden_dim, kernel_initializer=init, dtype=self.dtype_policy, name="qkv"
        )
        self.output_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=init, dtype=self.dtype_policy, name="attention_output"
        )
        self.probs_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="probs_dropout")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.qkv_dense.build(input_shape)
        self.output_dense.build((*tuple(input_shape[:-1]), self.hidden_dim))

    def call(
        self, x: Any, padding_mask: Any = None, training: bool | None = None, first_token_only: bool = False
    ) -> Any:
        """``(B, T, H)`` -> ``(B, T, H)``; with ``first_token_only`` only ``[CLS]`` queries: ``(B, 1, H)``."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        if first_token_only:
            # Keys/values from every token, the query from [CLS] alone: the work a pooled-output head needs.
            h = self.hidden_dim
            kernel = ops.cast(self.qkv_dense.kernel, self.compute_dtype)
            bias = ops.cast(self.qkv_dense.bias, self.compute_dtype)
            q = ops.matmul(x[:, :1], kernel[:, :h]) + bias[:h]  # (B, 1, H)
            q = ops.transpose(ops.reshape(q, (batch, 1, self.num_heads, self.head_dim)), (0, 2, 1, 3))
            kv = ops.matmul(x, kernel[:, h:]) + bias[h:]  # (B, T, 2H)
            kv = ops.transpose(
                ops.reshape(kv, (batch, length, 2, self.num_heads, self.head_dim)), (2, 0, 3, 1, 4)
            )
            k, v = ops.unstack(kv, 2, axis=0)  # (B, nh, T, hd) each
            q_length = 1
        else:
            qkv = self.qkv_dense(x)  # (B, T, 3H)
            qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, nh, T, hd)
            # unstack, not qkv[0], qkv[1], qkv[2]: its gradient is one stack, where each index's gradient
            # (StridedSliceGrad) writes a zero tensor of the whole qkv: 17% of the L2 step's op time, profiled.
            q, k, v = ops.unstack(qkv, 3, axis=0)
            q_length = length
        # Scale q rather than the scores: B*T*H multiplies instead of B*nh*T*T.
        q = q * ops.cast(1.0 / self.head_dim**0.5, q.dtype)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, nh, Tq, T)
        scores = ops.cast(scores, "float32")
        if padding_mask is not None:
            keep = ops.cast(padding_mask, "float32")[:, None, None, :]  # (B, 1, 1, T) over keys
            scores = scores + (1.0 - keep) * MASK_BIAS
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        probs = self.probs_dropout(probs, training=training)
        context = ops.matmul(probs, v)  # (B, nh, Tq, hd)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (batch, q_length, self.hidden_dim))
        return self.output_dense(context)  # (B, Tq, H)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            initializer_range=self.initializer_range,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerEncoder(keras.layers.Layer):
    """One post-LayerNorm BERT block: ``LN(x + Attn(x))`` then ``LN(x + FFN(x))`` with an exact-GELU FFN."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        layer_norm_epsilon: float = 1e-12,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        init = bert_initializer(initializer_range)
        policy = self.dtype_policy
        self.self_attention = MultiHeadSelfAttention(
            num_heads, hidden_dim, dropout, initializer_range, dtype=policy, name="self_attention"
        )
        self.attention_dropout = keras.layers.Dropout(dropout, dtype=policy, name="attention_dropout")
        self.attention_layer_norm = float32_layer_norm(layer_norm_epsilon, "attention_layer_norm")
        self.intermediate_dense = keras.layers.Dense(
            intermediate_dim,
            activation="gelu",  # keras.activations.gelu is the exact (erf) form, as in BERT
            kernel_initializer=init,
            dtype=policy,
            name="intermediate",
        )
        self.output_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=init, dtype=policy, name="output"
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=policy, name="output_dropout")
        self.output_layer_norm = float32_layer_norm(layer_norm_epsilon, "output_layer_norm")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        inner = tuple(input_shape[:-1])
        self.self_attention.build(input_shape)
        self.attention_layer_norm.build(input_shape)
        self.intermediate_dense.build(input_shape)
        self.output_dense.build((*inner, self.intermediate_dim))
        self.output_layer_norm.build(input_shape)

    def _add_and_norm(self, residual: Any, update: Any, norm: keras.layers.LayerNormalization) -> Any:
        summed = ops.cast(residual, "float32") + ops.cast(update, "float32")
        return ops.cast(norm(summed), self.compute_dtype)

    def call(
        self, x: Any, padding_mask: Any = None, training: bool | None = None, first_token_only: bool = False
    ) -> Any:
        """``(B, T, H)`` -> ``(B, T, H)``, or ``(B, 1, H)`` for ``[CLS]`` alone with ``first_token_only``
        (keys and values still come from every token: the result equals the full block's first row)."""
        attended = self.self_attention(
            x, padding_mask=padding_mask, training=training, first_token_only=first_token_only
        )
        if first_token_only:
            x = x[:, :1]
        x = self._add_and_norm(
            x, self.attention_dropout(attended, training=training), self.attention_layer_norm
        )
        hidden = self.output_dense(self.intermediate_dense(x))  # (B, T, I) -> (B, T, H)
        return self._add_and_norm(x, self.output_dropout(hidden, training=training), self.output_layer_norm)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            initializer_range=self.initializer_range,
        )
        return config
