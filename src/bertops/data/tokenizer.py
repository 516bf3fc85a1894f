"""BERT WordPiece tokenisation on Hugging Face ``tokenizers`` (Rust), shared by data, training, the pyfunc and serving.

The pipeline is BERT's reference one, built from the library's own parts:

- ``BertNormalizer``: drops control characters, maps whitespace to spaces, puts spaces around every CJK
  character (so each is its own token), lower-cases and strips accents (NFD, drop combining marks);
- ``BertPreTokenizer``: splits on whitespace and around every punctuation character;
- ``WordPiece``: greedy longest-match-first pieces with ``##`` continuations; a word longer than
  ``max_input_chars_per_word`` characters, or one that cannot be covered by pieces, becomes ``[UNK]``.

Usage::

    tok = load_tokenizer("data/vocab/vocab.txt")
    batch = encode_texts(tok, ["Hello, world!"], max_seq_length=128)
    batch["token_ids"].shape  # (1, 128), int32: [CLS] hello , world ! [SEP] [PAD] ...

Special tokens are always looked up by name (:func:`special_ids`): a vocabulary trained by bertops has
``[PAD]=0 .. [MASK]=4``, an adopted one (bert-base-uncased) keeps its own ids.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Order matters: a vocabulary trained by bertops gets exactly these ids 0..4.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"


class VocabError(ValueError):
    """A vocabulary file that cannot be used (missing, empty, duplicate entries, no special tokens)."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens in one vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_set(self) -> frozenset[int]:
        return frozenset((self.pad, self.unk, self.cls, self.sep, self.mask))


def read_vocab(vocab_file: str | Path) -> list[str]:
    """Read a BERT ``vocab.txt`` (one token per line, id = line number) and check it.

    Raises :class:`VocabError` naming the file and line for an empty file, a duplicate token or a
    missing special token.
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise VocabError(f"vocabulary file {path} does not exist")
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VocabError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    # A trailing empty line is an artefact of the writer, not a token.
    while tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise VocabError(f"vocabulary file {path} is empty")
    seen: dict[str, int] = {}
    for line_no, token in enumerate(tokens, start=1):
        if token in seen:
            raise VocabError(f"{path}:{line_no}: duplicate token {token!r} (first on line {seen[token]})")
        seen[token] = line_no
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise VocabError(
            f"{path}: missing special token(s) {', '.join(missing)}; BERT needs all of {SPECIAL_TOKENS}"
        )
    return tokens


def build_tokenizer(
    vocab: dict[str, int],
    lowercase: bool = True,
    strip_accents: bool = True,
    max_input_chars_per_word: int = 100,
) -> Tokenizer:
    """A BERT WordPiece ``tokenizers.Tokenizer`` over an in-memory ``{token: id}`` vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(
        models.WordPiece(
            vocab=vocab,
            unk_token=UNK,
            max_input_chars_per_word=max_input_chars_per_word,
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Only used by tokenizer.encode(..., add_special_tokens=True); encode_texts assembles its own arrays.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tok


def load_tokenizer(
    vocab_file: str | Path,
    lowercase: bool = True,
    strip_accents: bool = True,
    max_input_chars_per_word: int = 100,
) -> Tokenizer:
    """Load a BERT WordPiece tokenizer from a ``vocab.txt`` (the contract every step uses).

    ``strip_accents`` applies whether or not the text is lower-cased (BERT's uncased models strip, cased
    ones do not: pass ``lowercase=False, strip_accents=False`` for a cased vocabulary).
    """
    tokens = read_vocab(vocab_file)
    return build_tokenizer(
        {t: i for i, t in enumerate(tokens)},
        lowercase=lowercase,
        strip_accents=strip_accents,
        max_input_chars_per_word=max_input_chars_per_word,
    )


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of ``[PAD] [UNK] [CLS] [SEP] [MASK]`` in this tokenizer's vocabulary."""
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise VocabError(f"tokenizer vocabulary lacks special token(s) {', '.join(missing)}")
    return SpecialIds(pad=ids[PAD], unk=ids[UNK], cls=ids[CLS], sep=ids[SEP], mask=ids[MASK])


def vocab_list(tokenizer: Tokenizer) -> list[str]:
    """The vocabulary as a list indexed by id."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    out = [""] * (max(vocab.values()) + 1)
    for token, idx in vocab.items():
        out[idx] = token
    return out


def tokenize_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids of each text, without special tokens, batched in Rust."""
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]


# ASCII punctuation: BERT splits every one of these characters off as its own token.
_ASCII_PUNCT = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())


class WordPieceCache:
    """Word-piece ids of many texts, each distinct word tokenised once (and remembered across calls).

    Gives exactly what tokenising each text gives: BERT tokenises every space-separated word on its own
    (normalisation works per character, pre-tokenisation only splits further, WordPiece works per word), so
    a word's pieces can be cached. Leading and trailing ASCII punctuation is split off first (BERT makes each
    such character a token), so ``said,`` reuses ``said``: of the news corpus' 137k distinct words only
    ~60k reach the (comparatively slow) HF tokenizer. Texts are assembled from the cached pieces with NumPy.
    The cache is cleared when it holds ``max_words`` words, which bounds its memory.
    """

    def __init__(self, tokenizer: Tokenizer, max_words: int = 1_000_000) -> None:
        if tokenizer.truncation or tokenizer.padding:
            raise ValueError(
                "WordPieceCache needs a tokenizer without truncation or padding (see load_tokenizer)"
            )
        self.tokenizer = tokenizer
        self.max_words = max_words
        self._clear()

    def _clear(self) -> None:
        self._ids: dict[str, int] = {}  # word -> its row in the piece store
        self._len = np.zeros(0, dtype=np.int64)  # pieces per word
        self._off = np.zeros(0, dtype=np.int64)  # start of each word's pieces in _flat
        self._flat = np.zeros(0, dtype=np.int32)

    def _append(self, words: list[str], lengths: np.ndarray, flat: np.ndarray) -> None:
        base = len(self._ids)
        self._ids.update(zip(words, range(base, base + len(words)), strict=True))
        self._off = np.concatenate([self._off, len(self._flat) + np.cumsum(lengths) - lengths])
        self._len = np.concatenate([self._len, lengths])
        self._flat = np.concatenate([self._flat, flat])

    def _gather(self, word_ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored pieces of ``word_ids`` back to back, and the piece count of each run of ``counts`` words."""
        lengths = self._len[word_ids]
        out_off = np.cumsum(lengths) - lengths
        src = np.repeat(self._off[word_ids] - out_off, lengths) + np.arange(int(lengths.sum()))
        starts = np.cumsum(counts) - counts
        run_len = np.add.reduceat(lengths, starts) if len(lengths) else np.zeros(len(counts), dtype=np.int64)
        return self._flat[src], np.where(counts > 0, run_len, 0)

    def _add(self, words: list[str]) -> None:
        """Tokenise and store unseen words. A word with leading or trailing ASCII punctuation is stored as the
        concatenation of its parts (each punctuation character, the core), which are tokenised only if new."""
        punct = _ASCII_PUNCT
        plain: list[str] = []
        composite: list[str] = []
        parts: list[list[str]] = []
        for w in words:
            core = w.strip(punct)
            if core == w:
                plain.append(w)
                continue
            n_lead = len(w) - len(w.lstrip(punct))
            composite.append(w)
            parts.append([*w[:n_lead], core, *w[n_lead + len(core) :]] if core else list(w))
        needed = dict.fromkeys(itertools.chain(plain, itertools.chain.from_iterable(parts)))
        new = [p for p in needed if p not in self._ids]
        if new:
            # One pre-tokenised sequence rather than a batch of one-word texts: ~25% less work in the
            # tokenizer; word_ids says which word each piece came from (a word may have none).
            enc = self.tokenizer.encode(new, is_pretokenized=True, add_special_tokens=False)
            flat = np.asarray(enc.ids, dtype=np.int32)
            word_of = np.asarray(enc.word_ids, dtype=np.int64)
            self._append(new, np.bincount(word_of, minlength=len(new)).astype(np.int64), flat)
        keep = [i for i, w in enumerate(composite) if w not in self._ids]  # e.g. "," is its own part
        if keep:
            seqs = [parts[i] for i in keep]
            part_ids = np.fromiter(
                map(self._ids.__getitem__, itertools.chain.from_iterable(seqs)), dtype=np.int64
            )
            flat, lengths = self._gather(
                part_ids, np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
            )
            self._append([composite[i] for i in keep], lengths, flat)

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' word pieces as one flat int32 array, and each text's piece count (no special tokens)."""
        if not texts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        counts = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=len(texts))
        words = " ".join(texts).split(" ")
        missing = [w for w in dict.fromkeys(words) if w not in self._ids]
        if len(self._ids) + 2 * len(missing) > self.max_words:
            self._clear()
            missing = list(dict.fromkeys(words))
        if missing:
            self._add(missing)
        word_ids = np.fromiter(map(self._ids.__getitem__, words), dtype=np.int64, count=len(words))
        return self._gather(word_ids, counts)


TRUNCATIONS = ("head", "head_tail")


def truncate_pieces(
    pieces: Sequence[int], keep: int, truncation: str = "head", head_fraction: float = 0.25
) -> Sequence[int]:
    """At most ``keep`` pieces of a text: ``head`` keeps the first ones; ``head_tail`` keeps the first
    ``round(keep * head_fraction)`` and fills the rest from the end (Sun et al. 2019, "How to Fine-Tune BERT
    for Text Classification": the start and the end of a long review or article carry most of its label)."""
    if len(pieces) <= keep:
        return pieces
    if truncation == "head":
        return pieces[:keep]
    if truncation != "head_tail":
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    head = round(keep * head_fraction)
    return [*pieces[:head], *pieces[len(pieces) - (keep - head) :]]


def pack_single(
    pieces: Sequence[Sequence[int]],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    truncation: str = "head",
    head_fraction: float = 0.25,
) -> dict[str, np.ndarray]:
    """``[CLS] pieces [SEP] [PAD]...`` per row, keeping ``max_seq_length - 2`` pieces (:func:`truncate_pieces`).

    Returns int32 ``token_ids``, ``segment_ids`` (all 0), ``padding_mask`` (1 on real tokens),
    each of shape ``(len(pieces), max_seq_length)``.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3 ([CLS] x [SEP]), got {max_seq_length}")
    keep = max_seq_length - 2
    if truncation != "head":
        pieces = [truncate_pieces(p, keep, truncation, head_fraction) for p in pieces]
    n = len(pieces)
    token_ids = np.full((n, max_seq_length), pad_id, dtype=np.int32)
    lengths = np.fromiter((min(len(p), keep) for p in pieces), dtype=np.int64, count=n)
    if n:
        # One flat copy of all kept pieces, scattered into the rows with a boolean mask (row-major order).
        flat = np.fromiter((i for p in pieces for i in p[:keep]), dtype=np.int32, count=int(lengths.sum()))
        cols = np.arange(max_seq_length)
        body = (cols >= 1) & (cols[None, :] <= lengths[:, None])
        token_ids[body] = flat
        token_ids[:, 0] = cls_id
        token_ids[np.arange(n), lengths + 1] = sep_id
    padding_mask = (np.arange(max_seq_length)[None, :] < (lengths + 2)[:, None]).astype(np.int32)
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, max_seq_length), dtype=np.int32),
        "padding_mask": padding_mask,
    }


def encode_texts(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_seq_length: int,
    truncation: str = "head",
    head_fraction: float = 0.25,
) -> dict[str, np.ndarray]:
    """Encode texts as model inputs: ``[CLS] text [SEP]`` padded with ``[PAD]`` to ``max_seq_length``.

    Truncation rule (:func:`truncate_pieces`): ``head`` keeps the first ``max_seq_length - 2`` word pieces,
    ``head_tail`` a share from the start and the rest from the end. Returns int32 arrays ``token_ids``,
    ``segment_ids``, ``padding_mask`` of shape ``(len(texts), max_seq_length)``.
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a sequence of texts, not one string")
    ids = special_ids(tokenizer)
    return pack_single(
        tokenize_ids(tokenizer, texts), max_seq_length, ids.cls, ids.sep, ids.pad, truncation, head_fraction
    )


@dataclass(frozen=True)
class EncodingSettings:
    """Every setting that shapes a text's model inputs: the records are built with it and the model bundle
    stores it (``bertops.json`` key ``tokenizer``), so evaluation, the pyfunc and serving encode the same way.

    ``vocab_sha256`` identifies the vocabulary (the bundle carries the file itself).
    """

    lowercase: bool = True
    strip_accents: bool = True
    max_input_chars_per_word: int = 100
    max_seq_length: int = 128
    truncation: str = "head"
    head_fraction: float = 0.25
    vocab_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> EncodingSettings:
        """Read the settings back; an unknown key, a missing one or a wrong type raises naming ``where``."""
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(names) - {"vocab_file"})
        missing = sorted(n for n in names if n not in data and n != "vocab_sha256")
        if unknown or missing:
            raise VocabError(f"{where}: tokenizer settings have unknown keys {unknown} / lack keys {missing}")
        settings = cls(**{k: v for k, v in data.items() if k in names})
        if settings.truncation not in TRUNCATIONS:
            raise VocabError(
                f"{where}: tokenizer.truncation must be one of {TRUNCATIONS}, got {settings.truncation!r}"
            )
        return settings

    @classmethod
    def of_records(cls, manifest: Mapping[str, Any], where: str) -> EncodingSettings:
        """The settings a records manifest was built with: its ``tokenizer`` block and ``max_seq_length``
        (blocks written before truncation was configurable, and pretraining's, mean the defaults)."""
        block = {k: v for k, v in (manifest.get("tokenizer") or {}).items() if k != "vocab_file"}
        return cls.from_dict({**asdict(cls()), "max_seq_length": manifest["max_seq_length"], **block}, where)

    def differences(self, other: EncodingSettings) -> dict[str, tuple[Any, Any]]:
        """``{setting: (mine, theirs)}`` for every setting that differs (an unknown vocabulary hash matches)."""
        out = {}
        for name, mine in asdict(self).items():
            theirs = getattr(other, name)
            if name == "vocab_sha256" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                out[name] = (mine, theirs)
        return out

    def tokenizer(self, vocab_file: str | Path) -> Tokenizer:
        return load_tokenizer(vocab_file, self.lowercase, self.strip_accents, self.max_input_chars_per_word)

    def encode(self, tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return encode_texts(tokenizer, texts, self.max_seq_length, self.truncation, self.head_fraction)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies a vocabulary)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
