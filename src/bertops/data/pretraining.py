"""BERT pretraining instances (masked LM + next sentence prediction), as google-research/bert makes them.

The recipe of ``create_pretraining_data.py``, per document and per ``dupe_factor`` pass:

- a target length of ``max_seq_length - 3`` word pieces, or with probability ``short_seq_prob`` a random one in
  ``[2, max_seq_length - 3]`` (drawn once per document, as the original does);
- sentences are gathered until the target is reached; a random number of them forms segment A. With
  probability 0.5 (always, when only one sentence was gathered) segment B is a random stretch of another
  document (``next_sentence_label = 1``) and the unused sentences go back to the document; otherwise B is the
  rest of the gathered sentences (``next_sentence_label = 0``). **0 = B is the real next segment, 1 = random.**
- the pair is truncated to fit (the longer segment loses a token, from the front or the back at random);
- ``[CLS] A [SEP] B [SEP]``; ``round(len * masked_lm_prob)`` positions (at least 1, at most
  ``max_predictions_per_seq``) are chosen among the word pieces (never ``[CLS]``/``[SEP]``/padding), whole
  words at a time with ``whole_word_masking``; each is replaced by ``[MASK]`` (80%), kept (10%) or replaced by
  a random token (10%).

Two deliberate differences: the random 10% are drawn from the vocabulary *without* its bracketed special and
``[unused]`` tokens (the original may insert ``[SEP]`` or ``[PAD]`` mid-sequence), and the "random document" of
a random next segment is drawn from the same *chunk* of the corpus (about one shard's worth of documents, a few
hundred news articles) rather than from the whole corpus, which is what keeps memory bounded.

Scale: the corpus is cut into chunks of whole documents by byte size, independently of the number of worker
processes; each chunk is tokenised (HF tokenizers, in batch), turned into instances with NumPy over the whole
chunk at once, shuffled and written as one shard by one worker. A chunk's random streams are seeded by
``(seed, chunk index)``, so the output is identical for any number of workers, and memory per worker is one
chunk. ``shard_size`` sets the chunk size; the shard's instance count follows from the text (approximately
``shard_size``).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertops.config import BertopsConfig, PretrainDataConfig
from bertops.data.errors import DataError
from bertops.data.io import atomic_dir, write_json
from bertops.data.records import make_manifest, serialize_examples
from bertops.data.tokenizer import (
    CONTINUATION_PREFIX,
    WordPieceCache,
    build_tokenizer,
    read_vocab,
    special_ids,
)
from bertops.paths import MANIFEST, DataLayout

log = logging.getLogger(__name__)

# Corpus bytes (JSONL) per instance per pass and per word piece of max_seq_length, measured on the English news
# corpus (~0.72 * (S - 3) pieces per instance, ~4.7 bytes per piece): sizes the chunks so that a shard holds
# about shard_size instances.
_BYTES_PER_INSTANCE_PIECE = 3.4


@dataclass(frozen=True)
class TokenizerSettings:
    """How to rebuild the tokenizer in a worker process (a ``tokenizers.Tokenizer`` is not sent around)."""

    vocab_file: str
    lowercase: bool = True
    strip_accents: bool = True
    max_input_chars_per_word: int = 100


@dataclass(frozen=True)
class Chunk:
    """Whole JSONL lines ``[start, end)`` (bytes) of a corpus file; ``first_row`` is the 1-based line number."""

    index: int
    path: str
    start: int
    end: int
    first_row: int


@dataclass
class ChunkStats:
    chunk: int
    file: str
    documents: int = 0
    sentences: int = 0
    word_pieces: int = 0
    instances: int = 0
    random_next: int = 0
    masked: int = 0
    tokens: int = 0


# --------------------------------------------------------------------------------------- the vocabulary side
@dataclass(frozen=True)
class VocabInfo:
    """What instance creation needs to know about the vocabulary."""

    size: int
    pad: int
    cls: int
    sep: int
    mask: int
    is_continuation: np.ndarray  # (V,) bool: "##" pieces, for whole-word masking
    replacements: np.ndarray  # ids the random 10% draws from: all but bracketed special/unused tokens

    @classmethod
    def from_tokens(cls, tokens: list[str], pad: int, cls_id: int, sep: int, mask: int) -> VocabInfo:
        cont = np.array([t[:2] == CONTINUATION_PREFIX for t in tokens], dtype=bool)
        bracketed = np.array([t[:1] == "[" and t[-1:] == "]" for t in tokens], dtype=bool)
        return cls(len(tokens), pad, cls_id, sep, mask, cont, np.flatnonzero(~bracketed).astype(np.int32))


# ------------------------------------------------------------------------------------------ segment pairs
@dataclass
class _Pairs:
    """Segment pairs as ranges of a chunk's flat word-piece array: A = flat[a0:a1], B = flat[b0:b1]."""

    a0: list[int]
    a1: list[int]
    b0: list[int]
    b1: list[int]
    random_next: list[int]


def _document_pairs(
    doc: int,
    doc_start: list[int],
    sent_len: list[int],
    sent_off: list[int],
    max_num_tokens: int,
    short_seq_prob: float,
    rng: random.Random,
    out: _Pairs,
) -> None:
    """Append the segment pairs of one document (create_instances_from_document, on sentence ranges)."""
    first, stop = doc_start[doc], doc_start[doc + 1]
    n_docs = len(doc_start) - 1
    uniform = rng.random  # randint(lo, hi) == lo + int(uniform() * (hi - lo + 1)), at a tenth of the cost
    target = max_num_tokens
    if uniform() < short_seq_prob:
        target = 2 + int(uniform() * (max_num_tokens - 1))
    chunk_first = first
    length = 0
    i = first
    while i < stop:
        length += sent_len[i]
        if i == stop - 1 or length >= target:
            n_seg = i - chunk_first + 1
            a_sents = 1 + int(uniform() * (n_seg - 1)) if n_seg >= 2 else 1
            a_start, a_end = sent_off[chunk_first], sent_off[chunk_first + a_sents]
            out.a0.append(a_start)
            out.a1.append(a_end)
            if n_seg == 1 or uniform() < 0.5:
                target_b = target - (a_end - a_start)
                other = doc
                for _ in range(10):
                    other = int(uniform() * n_docs)
                    if other != doc:
                        break
                o_first, o_stop = doc_start[other], doc_start[other + 1]
                j = o_first + int(uniform() * (o_stop - o_first))
                b_start, b_len = sent_off[j], 0
                while j < o_stop:
                    b_len += sent_len[j]
                    j += 1
                    if b_len >= target_b:
                        break
                out.b0.append(b_start)
                out.b1.append(sent_off[j])
                out.random_next.append(1)
                i -= n_seg - a_sents  # the unused sentences go back to the document
            else:
                out.b0.append(a_end)
                out.b1.append(sent_off[i + 1])
                out.random_next.append(0)
            chunk_first = i + 1
            length = 0
        i += 1


def _truncate(pairs: _Pairs, max_num_tokens: int, gen: np.random.Generator) -> tuple[np.ndarray, ...]:
    """truncate_seq_pair, vectorised: remove from the longer segment (ties: B), each removal front or back."""
    a0, a1, b0, b1 = (np.asarray(x, dtype=np.int64) for x in (pairs.a0, pairs.a1, pairs.b0, pairs.b1))
    la, lb = a1 - a0, b1 - b0
    excess = np.maximum(la + lb - max_num_tokens, 0)
    # First the longer loses until both are equal, then they alternate starting with B.
    d = np.minimum(excess, np.abs(la - lb))
    rest = excess - d
    ra = np.where(la > lb, d, 0) + rest // 2
    rb = np.where(la > lb, 0, d) + (rest + 1) // 2
    fa = gen.binomial(ra, 0.5)
    fb = gen.binomial(rb, 0.5)
    return a0 + fa, a1 - (ra - fa), b0 + fb, b1 - (rb - fb)


# ----------------------------------------------------------------------------------------------- masking
def _choose_masked(
    cand: np.ndarray,
    num_to_predict: np.ndarray,
    max_predictions: int,
    word_start: np.ndarray | None,
    gen: np.random.Generator,
) -> np.ndarray:
    """Boolean (n, S) mask of the positions to predict: a uniformly random subset of the candidates.

    Without whole-word masking the first ``num_to_predict`` candidates of a random permutation. With it, the
    candidates' words in random order, each taken whole if it still fits (the original's skip rule).
    """
    n, s = cand.shape
    rows = np.arange(n)[:, None]
    if word_start is None:
        keys = gen.random((n, s), dtype=np.float32)
        keys[~cand] = 2.0
        k = min(max_predictions, s)
        part = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < s else np.broadcast_to(np.arange(s), (n, s))
        order = np.take_along_axis(part, np.argsort(keys[rows, part], axis=1), axis=1)
        take = (np.arange(k)[None, :] < num_to_predict[:, None]) & cand[rows, order]
        chosen = np.zeros((n, s), dtype=bool)
        chosen[np.broadcast_to(rows, order.shape)[take], order[take]] = True
        return chosen
    # Word units: a candidate starts a unit unless it continues a word ("##") whose previous piece is a candidate.
    unit_id = np.cumsum(word_start, axis=1) - 1  # (n, S): the unit of each position (valid where cand)
    n_units = word_start.sum(axis=1)
    unit_len = np.zeros((n, s + 1), dtype=np.int64)
    np.add.at(unit_len, (np.broadcast_to(rows, (n, s))[cand], unit_id[cand]), 1)
    unit_key = np.where(np.arange(s + 1)[None, :] < n_units[:, None], gen.random((n, s + 1)), 2.0)
    order = np.argsort(unit_key, axis=1)
    taken = np.zeros(n, dtype=np.int64)
    unit_taken = np.zeros((n, s + 1), dtype=bool)
    for r in range(int(n_units.max(initial=0))):
        u = order[:, r]
        ln = unit_len[np.arange(n), u]
        ok = (r < n_units) & (taken + ln <= num_to_predict)
        unit_taken[np.arange(n)[ok], u[ok]] = True
        taken += np.where(ok, ln, 0)
    return cand & unit_taken[rows, np.maximum(unit_id, 0)]


def build_instances(
    flat: np.ndarray,
    a0: np.ndarray,
    a1: np.ndarray,
    b0: np.ndarray,
    b1: np.ndarray,
    random_next: np.ndarray,
    settings: PretrainDataConfig,
    vocab: VocabInfo,
    gen: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Pretraining features of (already truncated) segment pairs over ``flat``, with masking applied.

    Returns the arrays of the ``pretraining`` record spec (``bertops.data.records.feature_spec``).
    """
    s, p = settings.max_seq_length, settings.max_predictions_per_seq
    n = len(a0)
    a0, b0 = a0.astype(np.int32), b0.astype(np.int32)
    la, lb = (a1 - a0).astype(np.int32)[:, None], (b1 - b0).astype(np.int32)[:, None]
    pos = np.arange(s, dtype=np.int32)[None, :]
    in_a = (pos >= 1) & (pos <= la)
    in_b = (pos >= la + 2) & (pos <= la + 1 + lb)
    src = np.where(in_a, a0[:, None] + pos - 1, np.where(in_b, b0[:, None] + pos - la - 2, 0))
    tokens = np.where(in_a | in_b, flat[src], vocab.pad).astype(np.int32)
    rows = np.arange(n)
    tokens[:, 0] = vocab.cls
    tokens[rows, la[:, 0] + 1] = vocab.sep
    tokens[rows, la[:, 0] + lb[:, 0] + 2] = vocab.sep
    seq_len = la[:, 0] + lb[:, 0] + 3
    segment_ids = ((pos >= la + 2) & (pos < seq_len[:, None])).astype(np.int32)
    padding_mask = (pos < seq_len[:, None]).astype(np.int32)

    cand = in_a | in_b
    num_to_predict = np.minimum(p, np.maximum(1, np.rint(seq_len * settings.masked_lm_prob).astype(np.int64)))
    word_start = None
    if settings.whole_word_masking:
        cont = vocab.is_continuation[tokens] & cand
        prev_cand = np.zeros_like(cand)
        prev_cand[:, 1:] = cand[:, :-1]
        word_start = cand & ~(cont & prev_cand)
    chosen = _choose_masked(cand, num_to_predict, p, word_start, gen)

    # Positions in ascending order, padded to P with 0 (weight 0).
    big = np.where(chosen, pos, s)
    positions = np.sort(np.partition(big, min(p, s) - 1, axis=1)[:, :p] if p < s else big, axis=1)
    if positions.shape[1] < p:
        positions = np.concatenate([positions, np.full((n, p - positions.shape[1]), s)], axis=1)
    valid = positions < s
    positions = np.where(valid, positions, 0)
    labels = np.where(valid, tokens[rows[:, None], positions], 0).astype(np.int32)
    u = gen.random((n, p), dtype=np.float32)
    replacement = vocab.replacements[gen.integers(0, len(vocab.replacements), size=(n, p))]
    new = np.where(u < 0.8, vocab.mask, np.where(u < 0.9, labels, replacement))
    r_idx, c_idx = np.nonzero(valid)
    tokens[r_idx, positions[r_idx, c_idx]] = new[r_idx, c_idx]
    return {
        "token_ids": tokens,
        "segment_ids": segment_ids,
        "padding_mask": padding_mask,
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": labels,
        "masked_lm_weights": valid.astype(np.float32),
        "next_sentence_label": np.asarray(random_next, dtype=np.int32)[:, None],
    }


# ------------------------------------------------------------------------------------------------ chunks
def plan_chunks(path: Path, chunk_bytes: int) -> list[Chunk]:
    """Cut a JSONL corpus file into chunks of whole lines of about ``chunk_bytes`` (one streaming pass)."""
    chunks: list[Chunk] = []
    start = pos = 0
    row = first_row = 1
    with path.open("rb") as fh:
        for line in fh:
            pos += len(line)
            row += 1
            if pos - start >= chunk_bytes:
                chunks.append(Chunk(len(chunks), str(path), start, pos, first_row))
                start, first_row = pos, row
    if pos > start:
        chunks.append(Chunk(len(chunks), str(path), start, pos, first_row))
    return chunks


def _read_documents(chunk: Chunk) -> list[list[str]]:
    """The documents (lists of sentences) of a chunk; a malformed line raises DataError naming file and row."""
    with open(chunk.path, "rb") as fh:
        fh.seek(chunk.start)
        data = fh.read(chunk.end - chunk.start)
    docs: list[list[str]] = []
    for offset, raw in enumerate(data.split(b"\n")):
        row = chunk.first_row + offset
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"not valid JSON: {exc}", file=chunk.path, row=row) from None
        sentences = obj.get("sentences") if isinstance(obj, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(x, str) for x in sentences):
            raise DataError("expected a list of strings", file=chunk.path, row=row, field="sentences")
        docs.append(sentences)
    return docs


_WORKER: dict[str, Any] = {}


def _tokenizer_for(settings: TokenizerSettings) -> tuple[WordPieceCache, VocabInfo]:
    cached = _WORKER.get("tokenizer")
    if cached is None or cached[0] != settings:
        tokens = read_vocab(settings.vocab_file)
        tok = build_tokenizer(
            {t: i for i, t in enumerate(tokens)},
            lowercase=settings.lowercase,
            strip_accents=settings.strip_accents,
            max_input_chars_per_word=settings.max_input_chars_per_word,
        )
        ids = special_ids(tok)
        info = VocabInfo.from_tokens(tokens, ids.pad, ids.cls, ids.sep, ids.mask)
        cached = (settings, WordPieceCache(tok), info)
        _WORKER["tokenizer"] = cached
    return cached[1], cached[2]


def _worker_init() -> None:
    # One process per core already: the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def chunk_seed(seed: int, chunk: int) -> np.random.SeedSequence:
    """The random stream of one chunk: depends on the seed and the chunk index only."""
    return np.random.SeedSequence([seed, chunk])


def process_chunk(
    chunk: Chunk, out_file: str, settings: PretrainDataConfig, tok_settings: TokenizerSettings
) -> ChunkStats:
    """Tokenise one chunk, make its instances (all ``dupe_factor`` passes), shuffle and write them as one shard."""
    clock = [time.process_time()]

    def lap() -> float:
        clock.append(time.process_time())
        return clock[-1] - clock[-2]

    cache, vocab = _tokenizer_for(tok_settings)
    stats = ChunkStats(chunk=chunk.index, file=Path(out_file).name)
    docs = _read_documents(chunk)
    t_read = lap()
    flat, lens = cache.encode_flat([s for d in docs for s in d])
    # Sentences without word pieces are dropped, and so are documents left without sentences; flat holds
    # nothing for them, so the offsets of the kept sentences are the running sum of their lengths.
    doc_of = np.repeat(np.arange(len(docs)), np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)))
    keep = lens > 0
    doc_of = doc_of[keep]
    sent_len = lens[keep].tolist()
    doc_start = [0, *(np.flatnonzero(np.diff(doc_of)) + 1).tolist(), len(sent_len)] if sent_len else [0]
    sent_off = [0, *np.cumsum(lens[keep]).tolist()]
    stats.documents, stats.sentences, stats.word_pieces = len(doc_start) - 1, len(sent_len), len(flat)
    t_tok = lap()

    seeds = chunk_seed(settings.seed, chunk.index).spawn(2)
    py_rng = random.Random(int(seeds[0].generate_state(2, np.uint64)[0]))
    gen = np.random.default_rng(seeds[1])
    pairs = _Pairs([], [], [], [], [])
    max_num_tokens = settings.max_seq_length - 3
    if stats.documents:
        for _ in range(settings.dupe_factor):
            for doc in range(stats.documents):
                _document_pairs(
                    doc, doc_start, sent_len, sent_off, max_num_tokens, settings.short_seq_prob, py_rng, pairs
                )
    t_pairs = lap()
    a0, a1, b0, b1 = _truncate(pairs, max_num_tokens, gen)
    features = build_instances(
        flat, a0, a1, b0, b1, np.asarray(pairs.random_next, dtype=np.int32), settings, vocab, gen
    )
    order = gen.permutation(len(a0))
    features = {name: values[order] for name, values in features.items()}
    stats.instances = len(a0)
    stats.random_next = int(features["next_sentence_label"].sum())
    stats.masked = int(features["masked_lm_weights"].sum())
    stats.tokens = int(features["padding_mask"].sum())
    t_build = lap()
    Path(out_file).write_bytes(serialize_examples(features) if stats.instances else b"")
    log.debug(
        "chunk %d: %d instances; CPU s: read %.2f, tokenise %.2f, pairs %.2f, masking %.2f, write %.2f",
        chunk.index, stats.instances, t_read, t_tok, t_pairs, t_build, lap(),
    )
    return stats


def _run_chunk(args: tuple[Chunk, str, PretrainDataConfig, TokenizerSettings]) -> ChunkStats:
    return process_chunk(*args)


def chunk_bytes_for(settings: PretrainDataConfig) -> int:
    """Corpus bytes per chunk so that a chunk yields about ``shard_size`` instances over all passes."""
    per_pass = settings.shard_size / settings.dupe_factor
    return max(1, math.ceil(per_pass * (settings.max_seq_length - 3) * _BYTES_PER_INSTANCE_PIECE))


def create_pretraining_data(
    corpus_files: Mapping[str, Path],
    out_dir: Path,
    settings: PretrainDataConfig,
    tok_settings: TokenizerSettings,
    num_workers: int | None = None,
    optional: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write ``out_dir/<split>/shard-NNNNN.tfrecord`` for each ``{split: corpus.jsonl}`` and return the manifest.

    ``out_dir`` must exist and be empty (the caller swaps it into place). Shards are made by ``num_workers``
    processes (default ``settings.num_workers``), one chunk at a time each. A split listed in ``optional`` may be
    empty (e.g. no held-out documents); any other split without instances is an error naming its file.
    """
    workers = num_workers or settings.num_workers
    chunk_bytes = chunk_bytes_for(settings)
    tasks: list[tuple[Chunk, str, PretrainDataConfig, TokenizerSettings]] = []
    task_split: list[str] = []
    files: dict[str, list[str]] = {}
    for split, path in corpus_files.items():
        path = Path(path)
        if not path.is_file():
            raise DataError("corpus file does not exist (run the split stage first)", file=str(path))
        chunks = plan_chunks(path, chunk_bytes)
        if not chunks and split not in optional:
            raise DataError("corpus file is empty", file=str(path))
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        files[split] = []
        for c in chunks:
            rel = f"{split}/shard-{c.index:05d}.tfrecord"
            files[split].append(rel)
            tasks.append((c, str(out_dir / rel), settings, tok_settings))
            task_split.append(split)
    log.info("pretraining data: %d chunks of ~%d bytes, %d worker(s)", len(tasks), chunk_bytes, workers)

    if workers <= 1 or len(tasks) <= 1:
        results = [_run_chunk(t) for t in tasks]
    else:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_worker_init) as ex:
            results = list(ex.map(_run_chunk, tasks))

    counts: dict[str, int] = dict.fromkeys(corpus_files, 0)
    stats: dict[str, list[dict[str, Any]]] = {split: [] for split in corpus_files}
    for split, st in zip(task_split, results, strict=True):
        counts[split] += st.instances
        stats[split].append(asdict(st))
    for split, n in counts.items():
        if n == 0 and split not in optional:
            raise DataError("no pretraining instances: the corpus has no non-empty sentences", file=str(corpus_files[split]))
        if n == 0:
            log.warning("split %s has no pretraining instances (%s is empty)", split, corpus_files[split])
    totals = {
        split: {
            key: sum(s[key] for s in rows)
            for key in ("documents", "sentences", "word_pieces", "instances", "random_next", "masked", "tokens")
        }
        for split, rows in stats.items()
    }
    return make_manifest(
        "pretraining",
        max_seq_length=settings.max_seq_length,
        max_predictions_per_seq=settings.max_predictions_per_seq,
        num_examples=counts,
        files=files,
        vocab_size=len(read_vocab(tok_settings.vocab_file)),
        extra={
            "next_sentence_label": {"0": "B is the real next segment", "1": "B is a random segment"},
            "settings": settings.model_dump(mode="json"),
            "tokenizer": asdict(tok_settings) | {"vocab_file": Path(tok_settings.vocab_file).name},
            "totals": totals,
            "shards": stats,
        },
    )


def run_pretrain_data(cfg: BertopsConfig, layout: DataLayout | None = None) -> dict[str, Any]:
    """The ``pretrain_data`` stage: both corpus splits into ``data/pretrain`` at once (or not at all)."""
    layout = layout or DataLayout(Path(cfg.project.data_dir))
    vc = cfg.vocab
    tok = TokenizerSettings(str(layout.vocab_file), vc.lowercase, vc.strip_accents, vc.max_input_chars_per_word)
    read_vocab(layout.vocab_file)  # a clear error before any worker starts
    corpus = {split: layout.split_file("corpus", split) for split in ("train", "heldout")}
    with atomic_dir(layout.pretrain_dir) as tmp:
        manifest = create_pretraining_data(corpus, tmp, cfg.pretrain_data, tok, optional=("heldout",))
        write_json(tmp / MANIFEST, manifest)
    log.info("pretraining instances: %s -> %s", manifest["num_examples"], layout.pretrain_dir)
    return {"num_examples": manifest["num_examples"], "totals": manifest["totals"]}
