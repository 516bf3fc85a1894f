"""DVC stage ``ingest``: Sources from `ingest.*` -> data/ingested/{corpus,classification,ner}.jsonl (+ ingest_stats.json).

Usage: ``python pipelines/ingest.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.ingest import IngestStats, run_ingest
from bertops.stage import run_stage, stage_parser


def _summary(result: dict[str, IngestStats]) -> str:
    return "; ".join(
        f"{name}: {st.records} records ({st.dropped_empty} dropped empty, {st.excluded} excluded)"
        for name, st in result.items()
    )


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    return run_stage("ingest", args, run_ingest, sections=("ingest",), done=_summary)


if __name__ == "__main__":
    sys.exit(main())
