"""A tiny real NER bundle whose answer is known: its head says one chosen tag at every position."""

from __future__ import annotations

from pathlib import Path

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
WORDS = ["anna", "smith", "flew", "to", "zurich", "paris", "today", "ecole", "creme"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def constant_tag_bundle(path: Path, tag: str) -> Path:
    """A tiny NER bundle whose logits are one-hot on ``tag`` at every position."""
    import numpy as np

    from bertops.model.backbone import BertBackbone
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertTokenClassifier

    vocab = path.parent / f"{path.name}-vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    backbone = BertBackbone(
        vocabulary_size=len(SPECIAL + WORDS), num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout=0.0, max_sequence_length=64,
    )  # fmt: skip
    model = BertTokenClassifier(backbone, num_classes=len(LABELS), dropout=0.0)
    model.output_dense.kernel.assign(np.zeros(model.output_dense.kernel.shape, "float32"))
    bias = np.full(len(LABELS), -5.0, "float32")
    bias[LABELS.index(tag)] = 5.0
    model.output_dense.bias.assign(bias)
    return save_bundle(path, model, vocab_file=vocab, task="ner", max_seq_length=32, labels=LABELS)
