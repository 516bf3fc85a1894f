"""DVC stage ``vocab``: data/split/corpus/train.jsonl (or vocab.vocab_file) -> data/vocab/{vocab.txt,tokenizer.json}.

Usage: ``python pipelines/vocab.py [--params params.yaml] [--set section.key=value ...]`` (dvc.yaml runs it).
Bad data or config ends the run with exit status 1 and one message naming the file, row and field (or key);
the previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bertops.config import ConfigError, load_config
from bertops.data.errors import DataError
from bertops.data.vocab import run_vocab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("pipelines.vocab")
    try:
        cfg = load_config(args.params, args.set)
        log.info("config: %s", {k: cfg.to_dict()[k] for k in ("vocab",) if k in cfg.to_dict()})
        result = run_vocab(cfg)
    except (ConfigError, DataError) as exc:
        log.error("vocab failed: %s", exc)
        return 1
    log.info("vocab done: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
