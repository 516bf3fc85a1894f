"""DVC stage ``validate``: data/ingested/* -> data/reports/data_report.{json,md,html}; fails (exit 1) on bad data, naming file/row/field.

Usage: ``python pipelines/validate.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import sys

from bertops.data.validate import run_validate
from bertops.stage import run_stage, stage_parser


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "validate",
        stage_parser(__doc__).parse_args(argv),
        run_validate,
        sections=("validate",),
        done=lambda report: f"{report['status']}, {len(report['warnings'])} warning(s)",
    )


if __name__ == "__main__":
    sys.exit(main())
