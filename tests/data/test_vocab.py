"""The vocab stage: train a WordPiece vocabulary or adopt a vocab.txt; bad sizes and files fail cleanly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bertops.config import ConfigError, load_config
from bertops.data.errors import DataError
from bertops.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from bertops.data.vocab import run_vocab

PARAMS = Path(__file__).parents[2] / "params.yaml"
WORDS = ["tokenization", "tokenizer", "tokens", "the", "a", "running", "runner", "runs", "jumped", "jumping", "quickly", "quick", "résumé", "naïve", "CAFÉ", "東京", "data", "pipeline", "pipelines", "model", "models"]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = random.Random(0)
    corpus = tmp_path / "data" / "split" / "corpus" / "train.jsonl"
    corpus.parent.mkdir(parents=True)
    with corpus.open("w", encoding="utf-8") as fh:
        for d in range(50):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(10)) + "." for _ in range(5)]
            fh.write(json.dumps({"doc_id": str(d), "sentences": sentences, "source": "t", "row": d}) + "\n")
    return tmp_path / "data"


def cfg(data: Path, *overrides: str):
    return load_config(PARAMS, [f"project.data_dir={data}", *overrides])


def test_trains_a_wordpiece_vocabulary(data: Path) -> None:
    result = run_vocab(cfg(data, "vocab.vocab_size=200", "vocab.min_frequency=1"))
    vocab = (data / "vocab" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == list(SPECIAL_TOKENS)  # [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
    assert result["vocab_size"] == len(vocab) == len(set(vocab))
    assert any(t.startswith("##") for t in vocab)
    assert "é" not in vocab and "東" in vocab  # accents stripped; CJK characters kept
    tok = load_tokenizer(data / "vocab" / "vocab.txt")
    pieces = tok.encode("Tokenization pipelines", add_special_tokens=False).tokens
    assert "".join(p.removeprefix("##") for p in pieces) == "tokenizationpipelines"
    assert "[UNK]" not in pieces
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(data / "vocab" / "tokenizer.json"))
    assert saved.encode("Résumé, 東京!").ids == tok.encode("Résumé, 東京!").ids
    # Every word of the corpus is covered without [UNK] (the alphabet is always in the vocabulary).
    for word in WORDS:
        assert tok.token_to_id("[UNK]") not in tok.encode(word, add_special_tokens=False).ids, word


def test_too_small_vocabulary_is_an_error_and_keeps_outputs(data: Path) -> None:
    run_vocab(cfg(data, "vocab.vocab_size=200"))
    before = (data / "vocab" / "vocab.txt").read_bytes()
    with pytest.raises(ConfigError, match=r"vocab.vocab_size=5 is too small: the 5 special tokens"):
        run_vocab(cfg(data, "vocab.vocab_size=5"))
    assert (data / "vocab" / "vocab.txt").read_bytes() == before


def test_adopts_a_given_vocabulary(data: Path) -> None:
    run_vocab(cfg(data, "vocab.vocab_file=builtin:bert-base-uncased"))
    tok = load_tokenizer(data / "vocab" / "vocab.txt")
    assert tok.get_vocab_size() == 30522
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 100, 101, 102, 103]
    with pytest.raises(ConfigError, match="unknown builtin vocabulary 'nope'"):
        run_vocab(cfg(data, "vocab.vocab_file=builtin:nope"))


def test_bad_vocab_file_names_the_file_and_keeps_outputs(data: Path, tmp_path: Path) -> None:
    run_vocab(cfg(data, "vocab.vocab_file=builtin:bert-base-uncased"))
    before = (data / "vocab" / "vocab.txt").read_bytes()
    bad = tmp_path / "bad_vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad_vocab.txt: missing special token\(s\) \[MASK\]"):
        run_vocab(cfg(data, f"vocab.vocab_file={bad}"))
    with pytest.raises(DataError, match="does not exist"):
        run_vocab(cfg(data, f"vocab.vocab_file={tmp_path / 'missing.txt'}"))
    assert (data / "vocab" / "vocab.txt").read_bytes() == before
