"""DVC stage ``pretrain_data``: data/split/corpus/{train,heldout}.jsonl + data/vocab -> data/pretrain/{train,heldout}/shard-*.tfrecord + manifest.json.

Usage: ``python pipelines/pretrain_data.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bertops.config import ConfigError, load_config
from bertops.data.errors import DataError
from bertops.data.pretraining import run_pretrain_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("pipelines.pretrain_data")
    try:
        cfg = load_config(args.params, args.set)
        log.info("config: %s", {k: cfg.to_dict()[k] for k in ("vocab", "pretrain_data") if k in cfg.to_dict()})
        result = run_pretrain_data(cfg)
    except (ConfigError, DataError) as exc:
        log.error("pretrain_data failed: %s", exc)
        return 1
    log.info("pretrain_data done: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
