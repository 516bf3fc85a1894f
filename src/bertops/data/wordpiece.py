"""A deterministic WordPiece vocabulary learner: the same corpus gives the same vocabulary, byte for byte.

Why not Hugging Face ``tokenizers``' ``WordPieceTrainer``: it counts words into hash maps and breaks ties between
equally frequent merges by ids assigned in hash-map order, so two trainings on one corpus gave different
vocabularies (4 of 8,000 tokens differ), on one thread as well as on many (docs/data.md). Every later DVC stage
then got a new data version. This module keeps the library's normaliser and pre-tokeniser (pure functions) and
does the counting and merging itself, with every tie broken by the tokens' text.

The algorithm is the trainer's (BPE with ``##`` continuations, as BERT's WordPiece vocabularies are built):

1. count the words (normalised, pre-tokenised) of the corpus;
2. the alphabet is the ``limit_alphabet`` most frequent characters (ties: by character); a word's other
   characters are dropped, as the trainer does; a word longer than ``max_input_chars_per_word`` is skipped
   (tokenisation maps it to ``[UNK]`` whole);
3. each word starts as its first character plus ``##``-prefixed others;
4. repeatedly merge the adjacent pair with the highest count, weighted by word frequency (ties: the pair's text),
   into a new piece (``a`` + ``b`` without its ``##``), until the vocabulary reaches ``vocab_size`` or no pair
   occurs ``min_frequency`` times.

Usage::

    counts = count_words(sentences, lowercase=True, strip_accents=True)
    tokens = learn_wordpiece(counts, vocab_size=8000, min_frequency=2, limit_alphabet=1000)
"""

from __future__ import annotations

import functools
import heapq
import itertools
import string
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable

from bertops.data.tokenizer import CONTINUATION_PREFIX

Pair = tuple[str, str]


@functools.cache
def _punctuation_table() -> dict[int, str]:
    """``str.translate`` table putting spaces around BERT's punctuation: ASCII punctuation and Unicode ``P*``."""
    table: dict[int, str] = {}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if (cp < 128 and ch in string.punctuation) or unicodedata.category(ch).startswith("P"):
            table[cp] = f" {ch} "
    return table


def count_words(sentences: Iterable[str], *, lowercase: bool, strip_accents: bool) -> Counter[str]:
    """Word counts of ``sentences`` under BERT's normaliser and pre-tokeniser (the ones tokenisation uses).

    The normaliser is the library's; the pre-tokeniser's split (whitespace, then each punctuation character on
    its own) is done with ``str.translate`` and ``str.split``, twice as fast as calling ``BertPreTokenizer`` per
    sentence and tested to give the same words (tests/data/test_wordpiece.py).
    """
    from tokenizers import normalizers

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    table = _punctuation_table()
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(normalizer.normalize_str(sentence).translate(table).split())
    return counts


def _alphabet(word_counts: Counter[str], limit: int) -> list[str]:
    chars: Counter[str] = Counter()
    for word, count in word_counts.items():
        for ch in word:
            chars[ch] += count
    return sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit]


def _pairs(symbols: list[str]) -> Counter[Pair]:
    return Counter(itertools.pairwise(symbols))


def _merge(symbols: list[str], pair: Pair, new: str) -> list[str]:
    """``symbols`` with every non-overlapping occurrence of ``pair`` (left to right) replaced by ``new``."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_wordpiece(
    word_counts: Counter[str],
    *,
    vocab_size: int,
    min_frequency: int,
    limit_alphabet: int,
    special_tokens: tuple[str, ...] = (),
    max_input_chars_per_word: int = 100,
) -> list[str]:
    """A WordPiece vocabulary: ``special_tokens`` first, then the alphabet and learnt pieces, sorted by text.

    Deterministic: the result depends only on the counts (not on dict order, threads or the process).
    """
    alphabet = _alphabet(word_counts, limit_alphabet)
    allowed = set(alphabet)
    vocab: set[str] = set(alphabet)
    # One entry per distinct word in a fixed order (sorted), so that nothing below depends on insertion order.
    words: list[list[str]] = []
    freqs: list[int] = []
    for word in sorted(word_counts):
        if len(word) > max_input_chars_per_word:
            continue
        chars = [ch for ch in word if ch in allowed]
        if not chars:
            continue
        symbols = [chars[0]] + [CONTINUATION_PREFIX + ch for ch in chars[1:]]
        vocab.update(symbols)
        words.append(symbols)
        freqs.append(word_counts[word])

    pair_counts: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        for pair, n in _pairs(symbols).items():
            pair_counts[pair] += n * freqs[index]
            where[pair].add(index)
    # Max-heap by count, ties by the pair's text; entries go stale when a count changes and are skipped on pop.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    budget = vocab_size - len(special_tokens)
    while len(vocab) < budget and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale entry
        if -neg_count < min_frequency:
            break
        new = pair[0] + pair[1].removeprefix(CONTINUATION_PREFIX)
        vocab.add(new)
        changed: set[Pair] = set()
        for index in sorted(where.pop(pair)):
            old = words[index]
            before = _pairs(old)
            if pair not in before:
                continue  # this word's occurrence was consumed by an earlier merge
            merged = _merge(old, pair, new)
            after = _pairs(merged)
            words[index] = merged
            for p in before.keys() | after.keys():
                delta = (after[p] - before[p]) * freqs[index]
                if delta:
                    pair_counts[p] += delta
                    changed.add(p)
                if after[p]:
                    where[p].add(index)
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            count = pair_counts[p]
            if count > 0:
                heapq.heappush(heap, (-count, p))
            else:
                del pair_counts[p]
    return list(special_tokens) + sorted(vocab - set(special_tokens))
