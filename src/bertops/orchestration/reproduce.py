"""``bertops reproduce``: rebuild a model version's data from its lineage alone and compare it with the record.

A registered version names what produced it (tags written by the retrain or ``bertops register``): the git
commit, the exact overrides, the DVC data version and each stage output's hash. Reproducing it means:

1. a scratch git worktree of that commit under ``<state_dir>/reproduce/`` (never the user's workspace), with the
   raw inputs git does not hold (``data/raw``: a user's untracked files, exported feedback) linked in from the
   workspace; the files the commit holds keep the commit's content;
2. the recorded data overrides written into its ``params.yaml`` exactly (as the retrain's DVC experiment did);
3. ``dvc repro`` there, with that commit's code (``PYTHONPATH`` is the worktree's ``src``);
4. the rebuilt data version against the recorded one; when they differ, the first stage (in ``dvc.yaml`` order)
   whose output hash differs, with both hashes.

Usage::

    result = reproduce_data(root, tags_of(client, "bert-sentiment", "3"))
    result.ok, result.first_difference
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bertops.data import version as data_version_mod
from bertops.orchestration import dvc_ops
from bertops.registry.registry import (
    TAG_DATA,
    TAG_DATA_OUTPUTS,
    TAG_DVC_REV,
    TAG_GIT,
    TAG_OVERRIDES,
    TAG_TRAINING_RUN,
)
from bertops.training.trainer import REPRODUCE_SRC_ENV

log = logging.getLogger(__name__)

TAG_COMMIT, TAG_DATA_VERSION, TAG_OUTPUTS = TAG_GIT, TAG_DATA, TAG_DATA_OUTPUTS  # the names used below


class ReproduceError(RuntimeError):
    """The version cannot be rebuilt from its lineage (no commit, a dirty one, a commit git does not have)."""


@dataclass
class Reproduction:
    """What rebuilding a version's data gave."""

    commit: str
    recorded: str | None
    rebuilt: str | None
    data_overrides: list[str]
    first_difference: str | None = None  # "stage: path recorded <hash>, rebuilt <hash>"
    differences: list[str] = field(default_factory=list)
    worktree: str | None = None
    training: Any = None  # a TrainingReproduction, with --train

    @property
    def ok(self) -> bool:
        return self.recorded is not None and self.recorded == self.rebuilt


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ReproduceError(f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip()[-500:]}")
    return proc


def recorded_commit(tags: Mapping[str, str]) -> str:
    commit = tags.get(TAG_COMMIT) or "unknown"
    if commit == "unknown":
        raise ReproduceError(f"the version has no {TAG_COMMIT} tag: nothing says which code made its data")
    if commit.endswith("-dirty"):
        raise ReproduceError(
            f"the version was made from a checkout with uncommitted changes ({commit}): its code and params are "
            "not in git, so its data cannot be rebuilt from its lineage. Commit first, then retrain"
        )
    return commit


@contextmanager
def scratch_worktree(root: Path, commit: str, parent: Path, keep: bool = False) -> Iterator[Path]:
    """A detached git worktree of ``commit`` in ``parent`` (removed afterwards unless ``keep``)."""
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise ReproduceError(
            f"git has no commit {commit} in {root} (fetch it, or reproduce in the repo that made it)"
        )
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{commit[:12]}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    _git(root, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path
    finally:
        if not keep:
            _git(root, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path, ignore_errors=True)
            _git(root, "worktree", "prune", check=False)


def _link_untracked(src: Path, dst: Path) -> None:
    """Hard-link (or copy) into ``dst`` the files of ``src`` that ``dst`` lacks: the raw inputs git does not hold.
    A file the commit has keeps the commit's content (the record), whatever the workspace holds now."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_file() and not target.exists():
            dvc_ops.link_or_copy(path, target)


def recorded_outputs(root: Path, tags: Mapping[str, str]) -> dict[str, str]:
    """Each stage output's recorded hash: the version's tag, else the lock of its DVC commit or experiment."""
    if tags.get(TAG_OUTPUTS):
        return dict(json.loads(tags[TAG_OUTPUTS]))
    rev = tags.get(TAG_DVC_REV) or tags.get(TAG_COMMIT, "").removesuffix("-dirty")
    proc = _git(root, "show", f"{rev}:dvc.lock", check=False) if rev else None
    if proc is None or proc.returncode != 0:
        return {}
    return dict(data_version_mod.stage_outputs(yaml.safe_load(proc.stdout) or {}))


def _stage_order(worktree: Path) -> list[str]:
    spec = yaml.safe_load((worktree / "dvc.yaml").read_text(encoding="utf-8")) or {}
    return list((spec.get("stages") or {}).keys())


def compare_outputs(recorded: Mapping[str, str], rebuilt: Mapping[str, str], order: list[str]) -> list[str]:
    """Every output whose hash differs, in stage order: ``"stage: path recorded <a>, rebuilt <b>"``."""
    rank = {stage: i for i, stage in enumerate(order)}
    keys = sorted(set(recorded) | set(rebuilt), key=lambda k: (rank.get(k.split(":", 1)[0], len(rank)), k))
    out = []
    for key in keys:
        a, b = recorded.get(key), rebuilt.get(key)
        if a != b:
            stage, _, path = key.partition(":")
            out.append(f"{stage}: {path} recorded {a or '(none)'}, rebuilt {b or '(none)'}")
    return out


def reproduce_data(
    root: Path,
    tags: Mapping[str, str],
    state_dir: Path,
    keep: bool = False,
    train: Any = None,
) -> Reproduction:
    """Rebuild the data of the version whose ``tags`` are given (see the module docstring). ``train``: a callable
    given the worktree, run when the data was reproduced (``bertops reproduce --train``); its result is kept in
    :attr:`Reproduction.training`."""
    commit = recorded_commit(tags)
    overrides = [str(o) for o in json.loads(tags.get(TAG_OVERRIDES) or "[]")]
    with scratch_worktree(root, commit, state_dir / "reproduce", keep=keep) as tree:
        raw = root / "data" / "raw"
        if raw.is_dir():
            _link_untracked(raw, tree / "data" / "raw")
        data = dvc_ops.data_overrides(overrides, dvc_ops.param_keys(tree))
        if data:
            dvc_ops.write_overrides(tree / "params.yaml", data)
            dvc_ops.check_overrides_applied(tree / "params.yaml", data)
        env_path = os.environ.get("PYTHONPATH")  # the stages import the commit's bertops, not this one
        dvc_ops.run_dvc(
            tree, "repro", env={"PYTHONPATH": os.pathsep.join([str(tree / "src"), *filter(None, [env_path])])}
        )
        rebuilt_outputs = dvc_ops.output_hashes(tree)
        result = Reproduction(
            commit=commit, recorded=tags.get(TAG_DATA_VERSION), rebuilt=dvc_ops.data_version(tree),
            data_overrides=data, worktree=str(tree) if keep else None,
        )  # fmt: skip
        if not result.ok:
            result.differences = compare_outputs(
                recorded_outputs(root, tags), rebuilt_outputs, _stage_order(tree)
            )
            result.first_difference = result.differences[0] if result.differences else None
        elif train is not None:
            result.training = train(tree)
    return result


RESULT_PREFIX = "BERTOPS_RESULT "
# Without project.deterministic a retrained model differs in the last bits, and so its metrics, a little:
# a metric within this absolute tolerance counts as reproduced.
METRIC_TOLERANCE = 0.02


@dataclass
class TrainingReproduction:
    """What retraining with the recorded configuration gave, metric by metric."""

    run_id: str
    deterministic: bool
    tolerance: float
    compared: dict[str, tuple[float, float]]  # metric -> (recorded, retrained)

    @property
    def differences(self) -> list[str]:
        return [f"{k}: recorded {a:.6g}, retrained {b:.6g}" for k, (a, b) in self.compared.items()
                if abs(a - b) > self.tolerance or (self.tolerance == 0 and a != b)]  # fmt: skip

    @property
    def ok(self) -> bool:
        return bool(self.compared) and not self.differences


def recorded_training(client: Any, tags: Mapping[str, str]) -> tuple[str, dict[str, Any], dict[str, float]]:
    """The training run of the version: its id, its resolved config (the ``config/config.yaml`` artifact) and
    its final held-out metrics (``final_test_*``, ``final_validation_*``)."""
    import mlflow

    run_id = tags.get(TAG_TRAINING_RUN)
    if not run_id:
        raise ReproduceError(f"the version has no {TAG_TRAINING_RUN} tag: nothing says how it was trained")
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml",
                                                tracking_uri=client.tracking_uri)  # fmt: skip
    config = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    metrics = {k.removeprefix("final_"): float(v) for k, v in client.get_run(run_id).data.metrics.items()
               if k.startswith(("final_test_", "final_validation_"))}  # fmt: skip
    return run_id, config, metrics


def reproduce_training(
    tree: Path, client: Any, tags: Mapping[str, str], tracking_uri: str, ray_address: str | None = None
) -> TrainingReproduction:
    """Fine-tune again in the worktree ``tree`` (its code, its rebuilt data) with the recorded configuration, and
    compare the held-out metrics with the recorded ones."""
    run_id, config, recorded = recorded_training(client, tags)
    if config.get("finetune", {}).get("init") == "pretrained":
        raise ReproduceError(
            "the version was fine-tuned from bertops pretraining (finetune.init=pretrained): --train retrains "
            "only fine-tunes from scratch or a checkpoint (hf:/google:/bertops:) so far"
        )
    config["project"].update(data_dir=str(tree / "data"), state_dir=str(tree / ".bertops"))
    config["tracking"]["uri"] = tracking_uri
    config["finetune"].update(output_dir=str(tree / "artifacts" / "reproduced"), run_name=None)
    if ray_address:
        config["finetune"]["scaling"]["address"] = ray_address
    params = tree / "reproduce-params.yaml"
    params.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), REPRODUCE_SRC_ENV: str(tree / "src")}
    proc = subprocess.run([sys.executable, str(tree / "ray_jobs" / "finetune.py"),
                           "--params", str(params)], cwd=tree, env=env, capture_output=True, text=True)  # fmt: skip
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise ReproduceError(
            f"retraining with the recorded configuration failed (exit {proc.returncode}):\n{tail}"
        )
    got = json.loads(line.removeprefix(RESULT_PREFIX))["metrics"]
    compared = {
        k: (v, float(got[k])) for k, v in sorted(recorded.items()) if isinstance(got.get(k), int | float)
    }
    deterministic = bool(config["project"].get("deterministic"))
    return TrainingReproduction(run_id, deterministic, 0.0 if deterministic else METRIC_TOLERANCE, compared)


def tags_of(client: Any, name: str, version: str) -> dict[str, str]:
    """The tags of registered ``name`` ``version``."""
    from bertops.registry.registry import get_version

    return dict(get_version(client, name, version).tags)
