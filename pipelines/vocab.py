"""DVC stage ``vocab``: data/split/corpus/train.jsonl (or vocab.vocab_file) -> data/vocab/{vocab.txt,tokenizer.json}.

Usage: ``python pipelines/vocab.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.vocab import run_vocab
from bertops.stage import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    return run_stage("vocab", stage_parser(__doc__).parse_args(argv), run_vocab, sections=("vocab",))


if __name__ == "__main__":
    sys.exit(main())
