"""DVC stage ``finetune_data``: data/split/{classification,ner}/* + data/vocab -> data/finetune/<task>/{train,validation,test}.tfrecord + manifest.json + label_map.json.

Usage: ``python pipelines/finetune_data.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.finetune import run_finetune_data
from bertops.stage import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "finetune_data",
        stage_parser(__doc__).parse_args(argv),
        run_finetune_data,
        sections=("vocab", "finetune_data"),
    )


if __name__ == "__main__":
    sys.exit(main())
