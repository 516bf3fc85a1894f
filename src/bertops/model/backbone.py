"""``BertBackbone``: the BERT encoder as a functional Keras 3 model with keras-hub's dict interface.

    inputs  {"token_ids": (B, T) int32, "segment_ids": (B, T) int32, "padding_mask": (B, T) int32/bool}
    outputs {"sequence_output": (B, T, H), "pooled_output": (B, H)}

Embeddings (token + position + segment) -> LayerNorm -> dropout -> L post-LN encoder blocks -> pooler
(dense + tanh on ``[CLS]``). Sublayer names are stable: checkpoint import (``bertops.model.checkpoints``)
addresses weights through them::

    backbone = BertBackbone(vocabulary_size=8000, num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512)
    out = backbone({"token_ids": ids, "segment_ids": seg, "padding_mask": mask})
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from bertops.model.layers import (
    PACKAGE,
    PositionEmbedding,
    TransformerEncoder,
    bert_initializer,
    float32_layer_norm,
)

INPUT_NAMES = ("token_ids", "segment_ids", "padding_mask")


def backbone_inputs() -> dict[str, keras.KerasTensor]:
    """Symbolic inputs of variable length, one per name in :data:`INPUT_NAMES`."""
    return {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in INPUT_NAMES}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BertBackbone(keras.Model):
    """A BERT encoder (Devlin et al. 2019). Arguments are the architecture; see :mod:`bertops.model.presets`.

    ``dtype`` is a Keras dtype policy name (``float32``, ``mixed_bfloat16``, ``mixed_float16``): compute in
    that dtype, variables in float32, softmax and LayerNorm in float32. Outputs are in the compute dtype.
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        max_sequence_length: int = 512,
        num_segments: int = 2,
        layer_norm_epsilon: float = 1e-12,
        dtype: str | None = None,
        **kwargs: Any,
    ) -> None:
        policy = keras.dtype_policies.get(dtype or keras.config.dtype_policy().name)
        init = bert_initializer()
        # === layers (created before the graph so that their attribute names are their weight paths) ===
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init, dtype=policy, name="token_embedding"
        )
        self.position_embedding = PositionEmbedding(
            max_sequence_length, dtype=policy, name="position_embedding"
        )
        self.segment_embedding = keras.layers.Embedding(
            num_segments, hidden_dim, embeddings_initializer=init, dtype=policy, name="segment_embedding"
        )
        self.embeddings_layer_norm = float32_layer_norm(layer_norm_epsilon, "embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=policy, name="embeddings_dropout")
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads,
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=policy,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooled_dense = keras.layers.Dense(
            hidden_dim, activation="tanh", kernel_initializer=init, dtype=policy, name="pooled_dense"
        )

        # === functional graph ===
        inputs = backbone_inputs()
        outputs = self.encode(inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # Functional.__init__ does not take a dtype: set the policy afterwards (what get_config reports).
        self.dtype_policy = policy

        # === config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.layer_norm_epsilon = layer_norm_epsilon

    def encode(self, inputs: dict[str, Any], pooled_only: bool = False) -> dict[str, Any]:
        """Apply the backbone's layers to ``inputs`` (symbolic or eager) and return the output dict.

        ``pooled_only`` computes the last block for ``[CLS]`` alone and returns only ``pooled_output``: the
        same value, without the last block's attention queries and feed-forward work at every other position.
        Task heads that read only the pooled output build their graph with it (see ``BertClassifier``).
        """
        compute_dtype = self.token_embedding.compute_dtype
        tokens = self.token_embedding(inputs["token_ids"])  # (B, T, H)
        x = tokens + self.position_embedding(tokens) + self.segment_embedding(inputs["segment_ids"])
        x = ops.cast(self.embeddings_layer_norm(ops.cast(x, "float32")), compute_dtype)
        x = self.embeddings_dropout(x)
        last = len(self.transformer_layers) - 1
        for i, layer in enumerate(self.transformer_layers):
            x = layer(x, padding_mask=inputs["padding_mask"], first_token_only=pooled_only and i == last)
        pooled = self.pooled_dense(x[:, 0, :])  # [CLS] -> (B, H)
        if pooled_only:
            return {"pooled_output": pooled}
        return {"sequence_output": x, "pooled_output": pooled}

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dtype": self.dtype_policy.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertBackbone:
        return cls(**config)
