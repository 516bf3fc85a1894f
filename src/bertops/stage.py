"""What every DVC stage entry point in ``pipelines/`` shares: its arguments, logging and exit status.

A stage script is its docstring plus one call::

    def main(argv: list[str] | None = None) -> int:
        return run_stage("split", stage_parser(__doc__).parse_args(argv), run_split, sections=("split",))

``--params`` / ``--set`` read the config; the stage's sections of it are logged; an expected failure (a bad key,
bad data, or one of the stage's own ``errors``) is logged as one line naming what is wrong and ends the run
with exit status 1, so that DVC stops there and every earlier output stays as it was.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from bertops.config import BertopsConfig, ConfigError, load_config
from bertops.data.errors import DataError

T = TypeVar("T")


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of every stage: ``--params`` and repeatable ``--set key=value``; add a stage's own to it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    return parser


def run_stage(
    name: str,
    args: argparse.Namespace,
    run: Callable[[BertopsConfig], T],
    *,
    sections: Sequence[str] = (),
    done: Callable[[T], str] = str,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Load the config of ``args``, log its ``sections``, call ``run(cfg)`` and log ``done(result)``.

    Returns the exit status: 0, or 1 after logging "<name> failed: <message>" for a :class:`ConfigError`,
    a :class:`DataError` or one of ``errors``.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(f"pipelines.{name}")
    expected: tuple[type[Exception], ...] = (ConfigError, DataError, *errors)
    try:
        cfg = load_config(args.params, args.set)
        resolved = cfg.to_dict()
        log.info("config: %s", {key: resolved[key] for key in sections})
        result = run(cfg)
    except expected as exc:
        log.error("%s failed: %s", name, exc)
        return 1
    log.info("%s done: %s", name, done(result))
    return 0
