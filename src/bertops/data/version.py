"""The data version: one 16-hex-digit hash of the data pipeline's outputs as ``dvc.lock`` records them.

One format for one fact, everywhere bertops records it (training runs, model versions, cards, the retrain
summary, ``bertops reproduce``): a hash over every stage output's content hash in ``dvc.lock``. It changes
exactly when some output of the pipeline changed, which is when ``bert_data`` emits its Asset; the corpus version
covers only what pretraining reads (``vocab``, ``pretrain_data``) and decides whether to pretrain again.

Usage::

    data_version(Path("dvc.lock"))                     # "83ce960d1b26903a", or None without a lock
    data_version(Path("dvc.lock"), CORPUS_STAGES)      # the corpus version
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

CORPUS_STAGES = ("vocab", "pretrain_data")


class LockError(ValueError):
    """A ``dvc.lock`` that cannot be read."""


def read_lock(lock_file: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise LockError(f"{lock_file} is not valid YAML: {exc}") from exc


def stage_outputs(lock: dict[str, Any], stages: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``("stage:path", content hash)`` of every output in ``lock`` (of ``stages`` only, when given), sorted."""
    wanted = None if stages is None else set(stages)
    out: list[tuple[str, str]] = []
    for name, stage in sorted((lock.get("stages") or {}).items()):
        if wanted is not None and name not in wanted:
            continue
        for entry in stage.get("outs") or []:
            digest = entry.get("md5") or entry.get("hash") or entry.get("etag") or ""
            out.append((f"{name}:{entry.get('path')}", str(digest)))
    return out


def version_of(outputs: list[tuple[str, str]]) -> str | None:
    if not outputs:
        return None
    return hashlib.sha256("\n".join(f"{p}={h}" for p, h in outputs).encode()).hexdigest()[:16]


def data_version(lock_file: Path, stages: Iterable[str] | None = None) -> str | None:
    """The 16-hex-digit version of the outputs in ``lock_file`` (None when there is no lock or no output)."""
    if not lock_file.is_file():
        return None
    return version_of(stage_outputs(read_lock(lock_file), stages))


def covered_by_lock(paths: Iterable[str | Path], lock_file: Path) -> list[str]:
    """The ``paths`` that no output in ``lock_file`` holds (empty: all of them are versioned by the lock)."""
    if not lock_file.is_file():
        return [Path(p).as_posix() for p in paths]
    outs = [path.split(":", 1)[1] for path, _ in stage_outputs(read_lock(lock_file))]
    return [
        Path(p).as_posix()
        for p in paths
        if not any(Path(p).as_posix() == o or Path(p).as_posix().startswith(o + "/") for o in outs)
    ]
