"""Task models that share a :class:`~bertops.model.backbone.BertBackbone`.

- :class:`BertPretrainer`: backbone inputs + ``masked_lm_positions`` (B, P) ->
  ``{"mlm_logits": (B, P, V), "nsp_logits": (B, 2)}``. The masked-LM head (dense + GELU transform, LayerNorm,
  decoder tied to the word embeddings, output bias) runs only at the P masked positions, never over all T.
  NSP label convention: 0 = segment B really follows A, 1 = B is random.
- :class:`BertClassifier`: ``pooled_output`` -> dropout -> dense -> ``(B, num_classes)`` logits.
- :class:`BertTokenClassifier`: ``sequence_output`` -> dropout -> dense -> ``(B, T, num_classes)`` logits (NER).

All logits are float32 whatever the dtype policy, so losses and softmaxes are computed in float32.
Each task's ``get_config()`` holds the serialised backbone plus its own arguments; ``.keras`` files round-trip::

    model = BertClassifier(backbone, num_classes=2)
    model.save("model.keras"); keras.saving.load_model("model.keras")
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from bertops.model.backbone import BertBackbone, backbone_inputs
from bertops.model.layers import PACKAGE, bert_initializer, float32_layer_norm


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedLMHead(keras.layers.Layer):
    """Masked-LM prediction: gather masked positions, transform, LayerNorm, tied decoder + bias.

    ``token_embedding`` is the backbone's word-embedding layer; its matrix (V, H) is the decoder (transposed),
    as in BERT. It is not part of this layer's config: the owning task passes it on reconstruction.
    """

    def __init__(
        self,
        token_embedding: keras.layers.Embedding | None = None,
        layer_norm_epsilon: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if token_embedding is None:
            raise ValueError(
                "MaskedLMHead needs the backbone's token_embedding layer (build it via BertPretrainer)"
            )
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        hidden_dim = token_embedding.output_dim
        self.transform_dense = keras.layers.Dense(
            hidden_dim,
            activation="gelu",
            kernel_initializer=bert_initializer(),
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform_layer_norm = float32_layer_norm(layer_norm_epsilon, "transform_layer_norm")

    def build(
        self, sequence_output_shape: tuple[int | None, ...], masked_positions_shape: Any = None
    ) -> None:
        hidden_dim = self.token_embedding.output_dim
        self.transform_dense.build((None, None, hidden_dim))
        self.transform_layer_norm.build((None, None, hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.token_embedding.input_dim,),
            initializer="zeros",
            autocast=False,  # added to float32 logits: keep it float32 under mixed policies
        )

    def call(self, sequence_output: Any, masked_positions: Any) -> Any:
        positions = ops.cast(masked_positions, "int32")[:, :, None]  # (B, P, 1)
        x = ops.take_along_axis(sequence_output, positions, axis=1)  # (B, P, H): only masked positions
        x = self.transform_dense(x)
        x = ops.cast(self.transform_layer_norm(ops.cast(x, "float32")), self.compute_dtype)
        table = ops.cast(self.token_embedding.embeddings, self.compute_dtype)  # (V, H), tied
        logits = ops.einsum("bph,vh->bpv", x, table)
        return ops.cast(logits, "float32") + self.output_bias

    def compute_output_shape(
        self, sequence_output_shape: Any, masked_positions_shape: Any
    ) -> tuple[int | None, ...]:
        return (sequence_output_shape[0], masked_positions_shape[1], self.token_embedding.input_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(layer_norm_epsilon=self.layer_norm_epsilon)
        return config


class _BertTask(keras.Model):
    """Shared (de)serialisation of tasks: the config carries the backbone and the task's own arguments."""

    backbone: BertBackbone

    def _task_config(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            **self._task_config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _BertTask:
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BertPretrainer(_BertTask):
    """BERT pretraining model: masked-LM and next-sentence heads on one backbone."""

    def __init__(self, backbone: BertBackbone, **kwargs: Any) -> None:
        self.backbone = backbone
        self.masked_lm_head = MaskedLMHead(
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            dtype=backbone.dtype_policy,
            name="masked_lm_head",
        )
        self.next_sentence_head = keras.layers.Dense(
            2, kernel_initializer=bert_initializer(), dtype="float32", name="next_sentence_head"
        )
        inputs = backbone_inputs()
        inputs["masked_lm_positions"] = keras.Input(shape=(None,), dtype="int32", name="masked_lm_positions")
        features = backbone({k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")})
        outputs = {
            "mlm_logits": self.masked_lm_head(features["sequence_output"], inputs["masked_lm_positions"]),
            "nsp_logits": self.next_sentence_head(ops.cast(features["pooled_output"], "float32")),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BertClassifier(_BertTask):
    """Sequence classification: ``[CLS]`` pooled output -> ``(B, num_classes)`` float32 logits."""

    def __init__(self, backbone: BertBackbone, num_classes: int, dropout: float = 0.1, **kwargs: Any) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, kernel_initializer=bert_initializer(), dtype="float32", name="logits"
        )
        inputs = backbone_inputs()
        # Only [CLS] is read: the last block runs for it alone (same pooled output, less work).
        pooled = ops.cast(backbone.encode(inputs, pooled_only=True)["pooled_output"], "float32")
        logits = self.output_dense(self.output_dropout(pooled))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    def _task_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BertTokenClassifier(_BertTask):
    """Token classification (NER): ``sequence_output`` -> ``(B, T, num_classes)`` float32 logits."""

    def __init__(self, backbone: BertBackbone, num_classes: int, dropout: float = 0.1, **kwargs: Any) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, kernel_initializer=bert_initializer(), dtype="float32", name="logits"
        )
        inputs = backbone_inputs()
        sequence = ops.cast(backbone(inputs)["sequence_output"], "float32")
        logits = self.output_dense(self.output_dropout(sequence))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    def _task_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "dropout": self.dropout}
