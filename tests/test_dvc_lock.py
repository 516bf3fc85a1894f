"""The committed ``dvc.lock`` matches the code and ``params.yaml`` it was made from (fast: no stage runs).

``dvc.lock`` and the uncached ``data/reports/data_report.json`` are committed, the DVC way, so that a checkout
stays clean after ``make demo`` or a retrain. When this fails, the data code or params.yaml changed since the
lock was written: run ``bertops data repro`` and commit both files.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bertops.cli.data import dvc_env

REPO_ROOT = Path(__file__).resolve().parents[1]
FIX = "run `bertops data repro` and commit dvc.lock and data/reports/data_report.json"


def _tracked() -> set[str]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(out.splitlines())


def _lookup(data: dict, dotted: str) -> object:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_committed_dvc_lock_matches_code_and_params() -> None:
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text(encoding="utf-8"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    tracked = _tracked()
    assert "dvc.lock" in tracked and "data/reports/data_report.json" in tracked, FIX
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps") or []:
            if dep["path"] in tracked and (REPO_ROOT / dep["path"]).is_file():
                digest = hashlib.md5((REPO_ROOT / dep["path"]).read_bytes()).hexdigest()
                if digest != dep["md5"]:
                    stale.append(f"{name}: {dep['path']} changed")
        for key, value in (stage.get("params") or {}).get("params.yaml", {}).items():
            if _lookup(params, key) != value:
                stale.append(f"{name}: params.yaml {key} changed")
    assert not stale, f"dvc.lock is stale ({'; '.join(stale)}): {FIX}"


def _fresh_clone(dest: Path) -> None:
    """The checkout's tracked files, as they are now, in a new git repository (what `git clone` of it would give)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)


def _repro(root: Path, extra_env: dict[str, str], *args: str) -> None:
    env = {**dvc_env(), **extra_env}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _porcelain(root: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.slow
def test_fresh_clone_reproduces_the_committed_lock_under_any_threads_and_load(tmp_path: Path) -> None:
    """A fresh clone's `dvc repro` writes the committed dvc.lock byte for byte: once on one thread of everything
    beside a CPU-bound process, then again, forced, on the libraries' default thread pools with another hash seed.
    """
    _fresh_clone(tmp_path)
    one_thread = {
        "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "1",
    }  # fmt: skip
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _repro(tmp_path, one_thread)
    finally:
        burner.kill()
        burner.wait()
    assert _porcelain(tmp_path) == "", f"the first repro changed tracked files:\n{_porcelain(tmp_path)}"
    first = (tmp_path / "dvc.lock").read_bytes()
    _repro(tmp_path, {"RAYON_NUM_THREADS": "4", "OMP_NUM_THREADS": "4", "PYTHONHASHSEED": "2"}, "--force")
    assert _porcelain(tmp_path) == "", f"the forced repro changed tracked files:\n{_porcelain(tmp_path)}"
    assert (tmp_path / "dvc.lock").read_bytes() == first
