"""The committed ``dvc.lock`` matches the code and ``params.yaml`` it was made from (fast: no stage runs).

``dvc.lock`` and the uncached ``data/reports/data_report.json`` are committed, the DVC way, so that a checkout
stays clean after ``make demo`` or a retrain. When this fails, the data code or params.yaml changed since the
lock was written: run ``bertops data repro`` and commit both files.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FIX = "run `bertops data repro` and commit dvc.lock and data/reports/data_report.json"


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
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
