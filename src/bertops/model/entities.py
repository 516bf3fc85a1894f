"""Named entities from raw text with an NER bundle: words, one tag per word, BIO spans, character offsets.

    entities = extract_entities(bundle, ["Anna Smith flew to Zürich  today"])
    # [[{"text": "Anna Smith", "type": "person", "start": 0, "end": 10, "score": 0.97},
    #   {"text": "Zürich", "type": "location", "start": 19, "end": 25, "score": 0.91}]]

The steps, each the rule training and evaluation use:

1. **words** (:func:`split_words`): BERT's pre-tokenisation of the *original* string (whitespace and
   punctuation split off), and each CJK ideograph a word of its own (BERT's Chinese-character rule). Every word
   keeps its ``(start, end)`` character offsets into the string it came from, so an entity's offsets are exact
   whatever the normaliser does later (accents stripped, lower-casing, runs of spaces, emoji unknown to the
   vocabulary): they never come back from the word pieces.
2. **one tag per word** (:func:`tag_words`): the words are tokenised as pre-tokenised input
   (:func:`bertops.data.finetune.align_words`, the training records' rule); the tag of a word is the argmax at
   its *first* word piece, its score that tag's probability. A word cut off beyond ``max_seq_length`` or with
   no word piece is ``O``.
3. **entities** (:func:`bio_spans`): spans read the way conlleval/seqeval (default mode) count them: ``B-X``
   starts an entity, ``I-X`` continues an ``X`` and otherwise starts one, anything else ends it. An entity's
   text is the original string from its first word's start to its last word's end; its score is the mean of
   its words' scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.data.finetune import align_words

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

    from bertops.model.bundle import Bundle

OUTSIDE = "O"
Word = tuple[str, int, int]  # (text, start, end) with end exclusive, character offsets


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` of one BIO tag sequence (conlleval rules).

    ``B-X`` always starts a span; ``I-X`` continues an ``X`` span and otherwise starts one (after ``O``, at
    the start, or after another type: IOB1 and malformed IOB2 are read as conlleval reads them); a change of type
    or ``O`` ends a span. Types may contain ``-`` (``B-WORK-OF-ART``); a tag without a ``B-``/``I-`` prefix is
    outside.
    """
    spans: set[tuple[str, int, int]] = set()
    etype: str | None = None
    start = 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and kind == etype
        if etype is not None and not continues:
            spans.add((etype, start, i))
            etype = None
        if prefix == "B" or (prefix == "I" and not continues):
            etype, start = kind, i
    return spans


def _is_cjk(ch: str) -> bool:
    """BERT's "Chinese character" ranges (CJK Unified Ideographs and their extensions, compatibility blocks)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def split_words(tokenizer: Tokenizer, text: str) -> list[Word]:
    """The words of ``text`` with their character offsets into it (see the module docstring, step 1)."""
    words: list[Word] = []
    for word, (start, end) in tokenizer.pre_tokenizer.pre_tokenize_str(text):
        if not any(_is_cjk(c) for c in word):
            words.append((word, start, end))
            continue
        run = start  # split CJK ideographs off, one word each; other characters stay together
        for i, ch in enumerate(word):
            if _is_cjk(ch):
                if run < start + i:
                    words.append((text[run : start + i], run, start + i))
                words.append((ch, start + i, start + i + 1))
                run = start + i + 1
        if run < end:
            words.append((text[run:end], run, end))
    return words


def tag_words(
    bundle: Bundle, tokens: Sequence[Sequence[str]], batch_size: int = 64
) -> tuple[list[list[str]], list[list[float]], dict[str, int]]:
    """One tag and its probability per word (argmax at the word's first piece; ``O`` and the ``O``
    probability 1.0 for a word the model never sees), and the alignment counts of ``align_words``."""
    labels = list(bundle.labels or [])
    inputs, word_at, counts = align_words(bundle.tokenizer, [list(t) for t in tokens], bundle.max_seq_length)
    logits = bundle.forward(inputs, batch_size)  # (n, S, L) float32
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    best = probs.argmax(axis=-1)
    tags, scores = [], []
    for i, words in enumerate(tokens):
        row_tags, row_scores = [OUTSIDE] * len(words), [1.0] * len(words)
        for p in np.flatnonzero(word_at[i] >= 0):
            w = int(word_at[i, p])
            row_tags[w] = labels[int(best[i, p])]
            row_scores[w] = float(probs[i, p, best[i, p]])
        tags.append(row_tags)
        scores.append(row_scores)
    return tags, scores, counts


def entities_of(text: str, words: Sequence[Word], tags: Sequence[str], scores: Sequence[float]) -> list[dict]:
    """Entities of one text from its words' tags, in text order (see the module docstring, step 3)."""
    out: list[dict[str, Any]] = []
    for kind, first, last in sorted(bio_spans(tags), key=lambda s: s[1]):
        start, end = words[first][1], words[last - 1][2]
        out.append(
            {
                "text": text[start:end],
                "type": kind,
                "start": start,
                "end": end,
                "score": float(np.mean(scores[first:last])),
            }
        )
    return out


def extract_entities(bundle: Bundle, texts: Sequence[str], batch_size: int = 64) -> list[list[dict]]:
    """The entities of each raw text, ``{"text", "type", "start", "end", "score"}`` each, batched."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not one string")
    if bundle.task != "ner":
        raise ValueError(f"{bundle.path}: a {bundle.task!r} bundle does not tag entities (task 'ner' needed)")
    words = [split_words(bundle.tokenizer, t) for t in texts]
    if not texts:
        return []
    tags, scores, _ = tag_words(bundle, [[w for w, _, _ in ws] for ws in words], batch_size)
    return [entities_of(t, ws, tg, sc) for t, ws, tg, sc in zip(texts, words, tags, scores, strict=True)]


def mark_entities(text: str, entities: Sequence[dict[str, Any]]) -> str:
    """``text`` with each entity marked in place, for people to read: ``[Anna Smith](PER) flew to [Zürich](LOC)``."""
    out, last = [], 0
    for e in sorted(entities, key=lambda e: e["start"]):
        out += [text[last : e["start"]], f"[{text[e['start'] : e['end']]}]({e['type']})"]
        last = e["end"]
    return "".join([*out, text[last:]])
