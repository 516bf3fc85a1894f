"""Fixtures of the registry tests: tiny real classifier bundles and a synthetic sentiment test split.

The bundles are real ``BertClassifier`` models saved with ``save_bundle``: ``good_bundle`` is trained for a few
seconds until it separates the synthetic classes; ``weak_bundle`` is the same architecture untrained.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

LABELS = ["negative", "positive"]
POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "dull"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "story", "really", "quite", "a", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_SEQ = 48


def synthetic_examples(n: int, seed: int) -> list[dict[str, str]]:
    """Texts of 2-40 filler words with sentiment words of their class mixed in: lengths span every bucket."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        words = rng.choices(FILLER, k=rng.randint(2, 40))
        cue = POSITIVE if label == "positive" else NEGATIVE
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(cue))
        out.append({"text": " ".join(words), "label": label})
    return out


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def build_bundle(path: Path, train: list[dict[str, str]] | None, seed: int) -> Path:
    import keras
    import numpy as np

    from bertops.data.tokenizer import encode_texts, load_tokenizer
    from bertops.model.backbone import BertBackbone
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier

    vocab = path.parent / f"{path.name}-vocab.txt"
    vocab.write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n", encoding="utf-8")
    keras.utils.set_random_seed(seed)
    backbone = BertBackbone(
        vocabulary_size=len(SPECIAL + POSITIVE + NEGATIVE + FILLER),
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=0.0,
        max_sequence_length=64,
    )
    model = BertClassifier(backbone, num_classes=2, dropout=0.0)
    if train:
        tok = load_tokenizer(vocab)
        x = encode_texts(tok, [r["text"] for r in train], MAX_SEQ)
        y = np.asarray([LABELS.index(r["label"]) for r in train])
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    return save_bundle(
        path,
        model,
        vocab_file=vocab,
        task="classification",
        max_seq_length=MAX_SEQ,
        labels=LABELS,
        data_version="synthetic-v1",
    )


@pytest.fixture(scope="session")
def registry_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry-data")
    write_jsonl(root / "train.jsonl", synthetic_examples(320, seed=1))
    write_jsonl(root / "test.jsonl", synthetic_examples(120, seed=2))
    return root


@pytest.fixture(scope="session")
def test_file(registry_data: Path) -> Path:
    return registry_data / "test.jsonl"


@pytest.fixture(scope="session")
def good_bundle(registry_data: Path) -> Path:
    train = [json.loads(line) for line in (registry_data / "train.jsonl").read_text().splitlines()]
    return build_bundle(registry_data / "good-bundle", train, seed=7)


@pytest.fixture(scope="session")
def weak_bundle(registry_data: Path) -> Path:
    return build_bundle(registry_data / "weak-bundle", None, seed=8)


@pytest.fixture(scope="session")
def tracking_uri(request: pytest.FixtureRequest) -> str:
    """The real MLflow server of the session (``mlflow_server``), or ``BERTOPS_TEST_MLFLOW_URI`` when set.

    The variable lets a developer point the tests at an already running ``mlflow server`` on a loaded machine
    (starting one can take minutes there); CI leaves it unset and gets the shared fixture's fresh server.
    """
    env = os.environ.get("BERTOPS_TEST_MLFLOW_URI")
    if env:
        return env
    return request.getfixturevalue("mlflow_server").uri
