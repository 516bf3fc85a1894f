"""DVC stage ``ingest``: Sources from `ingest.*` -> data/ingested/{corpus,classification,ner}.jsonl (+ ingest_stats.json).

Usage: ``python pipelines/ingest.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bertops.config import ConfigError, load_config
from bertops.data.errors import DataError
from bertops.data.ingest import run_ingest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("pipelines.ingest")
    try:
        cfg = load_config(args.params, args.set)
        log.info("config: %s", cfg.to_dict()["ingest"])
        result = run_ingest(cfg)
    except (ConfigError, DataError) as exc:
        log.error("ingest failed: %s", exc)
        return 1
    for name, st in result.items():
        log.info(
            "ingest done: %s: %d records (%d dropped empty, %d excluded)",
            name,
            st.records,
            st.dropped_empty,
            st.excluded,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
