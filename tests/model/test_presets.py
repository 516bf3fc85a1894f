"""Presets and the model config section: sizes and parameter counts without building big models."""

from __future__ import annotations

import pytest

from bertops.config import ModelConfig
from bertops.model.presets import PRESETS, backbone_from_config, resolve_architecture


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("tiny", (2, 128, 2, 512)), ("mini", (4, 256, 4, 1024)), ("small", (4, 512, 8, 2048)),
     ("medium", (8, 512, 8, 2048)), ("base", (12, 768, 12, 3072)), ("large", (24, 1024, 16, 4096))],
)  # fmt: skip
def test_presets_resolve(preset, expected) -> None:
    arch = resolve_architecture(ModelConfig(preset=preset), vocab_size=30522)
    assert (arch.num_layers, arch.hidden_dim, arch.num_heads, arch.intermediate_dim) == expected


def test_parameter_counts_match_published_bert() -> None:
    # bert-base-uncased / bert-large-uncased BertModel (with pooler): 109,482,240 and 335,141,888 parameters.
    assert resolve_architecture(ModelConfig(preset="base"), 30522).num_parameters() == 109_482_240
    assert resolve_architecture(ModelConfig(preset="large"), 30522).num_parameters() == 335_141_888


def test_overrides_and_custom() -> None:
    arch = resolve_architecture(
        ModelConfig(preset="mini", num_layers=2, intermediate_dim=300, dropout=0.0), 100
    )
    assert (arch.num_layers, arch.hidden_dim, arch.intermediate_dim, arch.dropout) == (2, 256, 300, 0.0)
    custom = resolve_architecture(ModelConfig(preset="custom", num_layers=3, hidden_dim=96, num_heads=4), 100)
    assert (custom.num_layers, custom.hidden_dim, custom.intermediate_dim) == (3, 96, 384)
    with pytest.raises(ValueError, match=r"hidden_dim=100 is not divisible by model\.num_heads=3"):
        resolve_architecture(ModelConfig(preset="custom", num_layers=1, hidden_dim=100, num_heads=3), 100)
    assert set(PRESETS) == {"tiny", "mini", "small", "medium", "base", "large"}


def test_backbone_from_config_builds_counted_parameters() -> None:
    cfg = ModelConfig(preset="tiny", max_sequence_length=64, dtype_policy="mixed_bfloat16")
    backbone = backbone_from_config(cfg, vocab_size=1000)
    arch = resolve_architecture(cfg, 1000)
    assert backbone.count_params() == arch.num_parameters()
    assert backbone.dtype_policy.name == "mixed_bfloat16"
