"""Named BERT sizes and the one place that turns the ``model`` config section into a backbone.

The sizes follow the BERT paper's family (Turc et al. 2019 for the small ones): layers / hidden / heads,
with the feed-forward width at 4 x hidden unless the config says otherwise::

    from bertops.model.presets import backbone_from_config, resolve_architecture
    arch = resolve_architecture(cfg.model)          # pure Python: no TensorFlow needed
    backbone = backbone_from_config(cfg.model, vocab_size=30522)

Nothing here imports TensorFlow at module level: sizes and parameter counts are plain arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bertops.config import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from bertops.model.backbone import BertBackbone

# name -> (num_layers, hidden_dim, num_heads)
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclass(frozen=True)
class Architecture:
    """The resolved sizes of one BERT: exactly the :class:`BertBackbone` constructor arguments."""

    vocabulary_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    intermediate_dim: int
    dropout: float = 0.1
    max_sequence_length: int = 512
    num_segments: int = 2
    layer_norm_epsilon: float = 1e-12
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"model.hidden_dim={self.hidden_dim} is not divisible by model.num_heads={self.num_heads}"
            )

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    def num_parameters(self, with_pooler: bool = True) -> int:
        """Trainable parameter count of the backbone, computed without building it."""
        h, i, v = self.hidden_dim, self.intermediate_dim, self.vocabulary_size
        embeddings = (v + self.max_sequence_length + self.num_segments) * h + 2 * h  # + LayerNorm
        attention = 4 * (h * h + h) + 2 * h  # q, k, v, output + LayerNorm
        ffn = (h * i + i) + (i * h + h) + 2 * h  # in, out + LayerNorm
        pooler = (h * h + h) if with_pooler else 0
        return embeddings + self.num_layers * (attention + ffn) + pooler


def resolve_architecture(model_cfg: ModelConfig, vocab_size: int) -> Architecture:
    """Preset sizes, overridden by any size set explicitly in ``model_cfg``."""
    if model_cfg.preset == "custom":
        layers, hidden, heads = model_cfg.num_layers, model_cfg.hidden_dim, model_cfg.num_heads
    else:
        layers, hidden, heads = PRESETS[model_cfg.preset]
        layers = model_cfg.num_layers or layers
        hidden = model_cfg.hidden_dim or hidden
        heads = model_cfg.num_heads or heads
    assert layers and hidden and heads  # guaranteed by ModelConfig's validator for "custom"
    return Architecture(
        vocabulary_size=vocab_size,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=model_cfg.intermediate_dim or 4 * hidden,
        dropout=model_cfg.dropout,
        max_sequence_length=model_cfg.max_sequence_length,
        num_segments=model_cfg.type_vocab_size,
        dtype=model_cfg.dtype_policy,
    )


def backbone_from_config(model_cfg: ModelConfig, vocab_size: int) -> BertBackbone:
    """Build a freshly initialised :class:`BertBackbone` for the ``model`` config section."""
    from bertops.model.backbone import BertBackbone

    return BertBackbone(**resolve_architecture(model_cfg, vocab_size).to_kwargs())
