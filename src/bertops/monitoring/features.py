"""Derived features of one served text: what the drift check needs when the raw text is not kept.

``n_chars`` and ``n_words`` (whitespace words) are always there; ``n_pieces`` (WordPiece tokens, no special
tokens) and ``n_unk`` (how many of them are ``[UNK]``) when the model's tokenizer is reachable (bertops' own
pyfuncs; a foreign pyfunc gives ``None``). The same functions compute the reference side from the training
split, so both sides are measured alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

UNK = "[UNK]"


@dataclass(frozen=True)
class TextFeatures:
    n_chars: int
    n_words: int
    n_pieces: int | None
    n_unk: int | None


def text_features(texts: Sequence[str], tokenizer: Any | None) -> list[TextFeatures]:
    """Features of each text; ``tokenizer`` is a ``tokenizers.Tokenizer`` (bertops' WordPiece) or None."""
    pieces: list[list[str]] | None = None
    if tokenizer is not None and texts:
        pieces = [enc.tokens for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return [
        TextFeatures(
            n_chars=len(text),
            n_words=len(text.split()),
            n_pieces=len(pieces[i]) if pieces is not None else None,
            n_unk=sum(p == UNK for p in pieces[i]) if pieces is not None else None,
        )
        for i, text in enumerate(texts)
    ]


def model_tokenizer(pyfunc: Any) -> Any | None:
    """The WordPiece tokenizer inside a loaded bertops pyfunc (its bundle), or None for any other model."""
    try:
        return pyfunc.unwrap_python_model().bundle.tokenizer
    except AttributeError:  # not a bertops PythonModel (no unwrap_python_model / no bundle)
        return None
