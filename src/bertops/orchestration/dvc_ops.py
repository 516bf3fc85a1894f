"""DVC work for the DAGs: pull, repro, push, and the data version read from ``dvc.lock``.

The data version is a hash over every stage output's content hash in ``dvc.lock``: it changes exactly when some
output of the data pipeline changed, which is when ``bert_data`` emits its Asset. The corpus version covers only
what pretraining reads (the ``pretrain_data`` and ``vocab`` stages), which decides whether to pretrain again.

``dvc`` is run as a subprocess of this venv (PATH gets the venv's bin first: stage commands call ``python``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CORPUS_STAGES = ("vocab", "pretrain_data")


class DvcError(RuntimeError):
    """A dvc command that failed; the message has the command and its output tail."""


def _stage_outs(lock: dict[str, Any], stages: Iterable[str] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, stage in sorted((lock.get("stages") or {}).items()):
        if stages is not None and name not in stages:
            continue
        for entry in stage.get("outs") or []:
            digest = entry.get("md5") or entry.get("hash") or entry.get("etag") or ""
            out.append((f"{name}:{entry.get('path')}", str(digest)))
    return out


def data_version(root: Path, stages: Iterable[str] | None = None) -> str | None:
    """A 16-hex-digit version of the pipeline outputs in ``root/dvc.lock`` (None when there is no lock yet)."""
    path = root / "dvc.lock"
    if not path.exists():
        return None
    try:
        lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DvcError(f"{path} is not valid YAML: {exc}") from exc
    outs = _stage_outs(lock, None if stages is None else tuple(stages))
    if not outs:
        return None
    text = "\n".join(f"{p}={h}" for p, h in outs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def corpus_version(root: Path) -> str | None:
    """The version of what pretraining reads (vocabulary and pretraining instances)."""
    return data_version(root, CORPUS_STAGES)


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``root``, logging its output; raise :class:`DvcError` on failure when ``check``."""
    exe = Path(sys.executable).parent / "dvc"
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("[dvc] %s", line)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{tail}")
    return proc


def has_remote(root: Path) -> bool:
    """True when the repo has a default DVC remote configured."""
    proc = run_dvc(root, "remote", "default", check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def pull(root: Path) -> None:
    """Fetch what the remote has of the current outputs (missing entries are fine: repro makes them)."""
    if not has_remote(root):
        log.info("no DVC remote configured: skipping pull")
        return
    run_dvc(root, "pull", "--allow-missing", check=False)


def repro(root: Path) -> None:
    """``dvc repro``: run the stages whose deps or params changed."""
    run_dvc(root, "repro")


def push(root: Path) -> None:
    """Send the outputs to the default remote (none configured: skip)."""
    if not has_remote(root):
        log.info("no DVC remote configured: skipping push")
        return
    run_dvc(root, "push")
