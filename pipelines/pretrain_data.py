"""DVC stage ``pretrain_data``: data/split/corpus/{train,heldout}.jsonl + data/vocab -> data/pretrain/{train,heldout}/shard-*.tfrecord + manifest.json.

Usage: ``python pipelines/pretrain_data.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.pretraining import run_pretrain_data
from bertops.stage import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "pretrain_data",
        stage_parser(__doc__).parse_args(argv),
        run_pretrain_data,
        sections=("vocab", "pretrain_data"),
    )


if __name__ == "__main__":
    sys.exit(main())
