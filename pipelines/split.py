"""DVC stage ``split``: data/ingested/* -> data/split/{classification,ner}/{train,validation,test}.jsonl, data/split/corpus/{train,heldout}.jsonl.

Usage: ``python pipelines/split.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.split import run_split
from bertops.stage import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    return run_stage("split", stage_parser(__doc__).parse_args(argv), run_split, sections=("split",))


if __name__ == "__main__":
    sys.exit(main())
