"""DVC work for the DAGs: pull, repro, push, experiments, and the data version read from ``dvc.lock``.

A retrain with data overrides is a DVC experiment in the workspace (:func:`exp_run`), inside
:func:`workspace_restored`, which puts params.yaml, dvc.lock and the data back afterwards (``dvc checkout``:
from the cache, nothing recomputed). :func:`snapshot_outputs` hard-links one lock's outputs out of the cache
for one run to read.

The data version is a hash over every stage output's content hash in ``dvc.lock``: it changes exactly when some
output of the data pipeline changed, which is when ``bert_data`` emits its Asset. The corpus version covers only
what pretraining reads (the ``pretrain_data`` and ``vocab`` stages), which decides whether to pretrain again.

``dvc`` is run as a subprocess of this venv (PATH gets the venv's bin first: stage commands call ``python``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bertops.config import ConfigError, load_raw, parse_override
from bertops.data import version
from bertops.data.version import CORPUS_STAGES

log = logging.getLogger(__name__)

# params that can change what pretraining reads (an override of one of these may start a pretraining)
CORPUS_PARAMS = ("ingest.corpus", "ingest.drop_empty", "ingest.min_sentence_chars", "split", "vocab",
                 "pretrain_data", "project.data_dir")  # fmt: skip
_UNSAFE_REF = re.compile(r"[^A-Za-z0-9_-]+")


class DvcError(RuntimeError):
    """A dvc command that failed; the message has the command and its output tail."""


class StageInputError(DvcError):
    """A stage refused its data or config (``bertops.stage.run_stage``'s "<stage> failed: ..." line): the same
    inputs fail the same way, so a retry cannot help. :attr:`first_error` is that line's message."""

    def __init__(self, message: str, stage: str, first_error: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.first_error = first_error


# bertops.stage.run_stage logs "ERROR pipelines.<stage>: <stage> failed: <message naming file, row, field>"
_STAGE_FAILED = re.compile(r"ERROR pipelines\.(\w+): \1 failed: (.+)")


def data_version(root: Path, stages: Iterable[str] | None = None) -> str | None:
    """A 16-hex-digit version of the pipeline outputs in ``root/dvc.lock`` (None when there is no lock yet)."""
    try:
        return version.data_version(root / "dvc.lock", stages)
    except version.LockError as exc:
        raise DvcError(str(exc)) from exc


def output_hashes(root: Path) -> dict[str, str]:
    """``{"stage:path": content hash}`` of every output in ``root/dvc.lock`` (what the data version hashes)."""
    lock = root / "dvc.lock"
    return dict(version.stage_outputs(version.read_lock(lock))) if lock.is_file() else {}


def corpus_version(root: Path) -> str | None:
    """The version of what pretraining reads (vocabulary and pretraining instances)."""
    return data_version(root, CORPUS_STAGES)


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(
    root: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``root`` (``env``: variables set for it alone), logging its output; raise
    :class:`DvcError` on failure when ``check``."""
    exe = Path(sys.executable).parent / "dvc"
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    proc = subprocess.run(
        cmd, cwd=root, env={**_env(), **(env or {})}, capture_output=True, text=True, check=False
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("[dvc] %s", line)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        message = f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{tail}"
        refused = _STAGE_FAILED.search(proc.stdout + proc.stderr)
        if refused:
            stage, error = refused.group(1), refused.group(2).strip()
            raise StageInputError(f"stage {stage} refused its input: {error}\n{message}", stage, error)
        raise DvcError(message)
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


# ------------------------------------------------------------------------------------------- experiments
def param_keys(root: Path) -> list[str]:
    """Every params key some stage of ``root/dvc.yaml`` reads (``ingest``, ``vocab.lowercase``, ...)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    keys: set[str] = set()
    for stage in (spec.get("stages") or {}).values():
        for entry in stage.get("params") or []:
            if isinstance(entry, dict):  # {"other.yaml": [keys]}
                for names in entry.values():
                    keys.update(str(k) for k in names or [])
            else:
                keys.add(str(entry))
    return sorted(keys)


def data_overrides(overrides: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The ``key=value`` overrides that change what some DVC stage reads (the rest are training's)."""
    keys = list(keys)

    def reads(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)

    return [text for text in overrides if reads(text.split("=", 1)[0].strip())]


def experiment_name(run_id: str) -> str:
    """A DVC experiment name (a valid git ref name) for one Airflow run id."""
    safe = _UNSAFE_REF.sub("-", run_id).strip("-.") or "run"
    return f"retrain-{safe}"[:100]


def _uncached_outs(root: Path) -> list[Path]:
    """Outputs declared ``cache: false`` in dvc.yaml: ``dvc checkout`` cannot restore these."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    found: list[Path] = []
    for stage in (spec.get("stages") or {}).values():
        for field in ("outs", "metrics", "plots"):
            for entry in stage.get(field) or []:
                if isinstance(entry, dict):
                    for path, opts in entry.items():
                        if isinstance(opts, dict) and opts.get("cache") is False:
                            found.append(root / path)
    return found


BACKUP_DIR = ".dvc/tmp/bertops-workspace"  # git- and DVC-ignored; outlives a process killed mid-experiment


def _restore(root: Path, backup: Path) -> None:
    """Write the saved files back (a missing one: delete it), then ``dvc checkout`` the cached outputs."""
    manifest = json.loads((backup / "manifest.json").read_text(encoding="utf-8"))
    for rel, name in manifest.items():
        if name is None:
            (root / rel).unlink(missing_ok=True)
        else:
            (root / rel).write_bytes((backup / name).read_bytes())
    if manifest.get("dvc.lock") is not None:
        run_dvc(root, "checkout", "--force")
    shutil.rmtree(backup)


@contextmanager
def workspace_restored(root: Path) -> Iterator[None]:
    """Run a workspace experiment, then put the workspace back as it was (params, lock, data) the DVC way.

    ``params.yaml``, ``dvc.lock`` and the uncached outputs are saved byte for byte (in :data:`BACKUP_DIR`) and
    written back; the cached outputs are then restored from the DVC cache by ``dvc checkout`` (no stage runs
    again). Also on failure; and a backup left by a process killed inside is restored first, so a retried task
    starts from the real workspace, not from the half-run experiment's.
    """
    backup = root / BACKUP_DIR
    if (backup / "manifest.json").exists():
        log.warning("restoring the workspace saved before an interrupted experiment (%s)", backup)
        _restore(root, backup)
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    manifest: dict[str, str | None] = {}
    for i, path in enumerate([root / "params.yaml", root / "dvc.lock", *_uncached_outs(root)]):
        rel = path.relative_to(root).as_posix()
        manifest[rel] = f"{i}.bin" if path.exists() else None
        if path.exists():
            shutil.copyfile(path, backup / f"{i}.bin")
    (backup / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")  # written last: complete
    try:
        yield
    finally:
        _restore(root, backup)


class OverrideNotApplied(DvcError):
    """params.yaml does not hold an override's value as asked: the run would train on other data than recorded."""


def write_overrides(params_file: Path, overrides: Iterable[str]) -> None:
    """Write ``key=value`` overrides into ``params_file``; a value replaces what was there, dicts and lists whole.

    ``dvc exp run --set-param key={}`` merges a mapping into the existing one (the stage still read the old
    ``label_mapping``), so bertops writes the params itself, keeping the file's comments and layout (ruamel).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    data = yaml_rt.load(params_file.read_text(encoding="utf-8")) or CommentedMap()
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = CommentedMap()
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section of {params_file.name}")
        node[parts[-1]] = value
    with params_file.open("w", encoding="utf-8") as fh:
        yaml_rt.dump(data, fh)


def check_overrides_applied(params_file: Path, overrides: Iterable[str]) -> None:
    """Read ``params_file`` back as the stages read it; raise :class:`OverrideNotApplied` naming every key whose
    value is not exactly the override's (what was asked must be what runs, and what is recorded)."""
    data = load_raw(params_file)
    wrong: list[str] = []
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for part in parts:
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if json.dumps(node, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            shown = "<missing>" if node is _MISSING else json.dumps(node, default=str)
            wrong.append(
                f"{'.'.join(parts)}: asked {json.dumps(value, default=str)}, {params_file.name} has {shown}"
            )
    if wrong:
        raise OverrideNotApplied(
            f"overrides not applied as asked in {params_file} (nothing ran): " + "; ".join(wrong)
        )


_MISSING = object()


def exp_run(root: Path, name: str, overrides: Iterable[str]) -> str:
    """A DVC experiment of ``overrides`` in the workspace (``dvc exp run -n <name>``); returns its commit.

    The overrides are written into params.yaml by :func:`write_overrides` (replace, not merge) and read back by
    :func:`check_overrides_applied` before any stage runs, and again after the run (what the stages read). An
    experiment of the same name (a retried task) is replaced.
    """
    overrides = list(overrides)
    params_file = root / "params.yaml"
    write_overrides(params_file, overrides)
    check_overrides_applied(params_file, overrides)
    run_dvc(root, "exp", "remove", name, check=False)
    run_dvc(root, "exp", "run", "--name", name)
    check_overrides_applied(params_file, overrides)
    ref = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                         cwd=root, capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in ref.splitlines():
        sha, _, refname = line.partition(" ")
        if refname.rsplit("/", 1)[-1] == name:
            return sha
    raise DvcError(f"`dvc exp run --name {name}` finished but no experiment ref {name!r} exists in {root}")


def cache_dir(root: Path) -> Path:
    proc = run_dvc(root, "cache", "dir")
    path = Path(proc.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else root / path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (its folders made), or copy it where a link cannot be made."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # cache files are read-only and never rewritten: a hard link is a safe snapshot
    except OSError:
        shutil.copy2(src, dst)


def snapshot_outputs(root: Path, dest: Path, prefix: str = "data") -> int:
    """Hard-link (or copy) every output under ``prefix/`` recorded in ``root/dvc.lock`` into ``dest``.

    Cached outputs come from the DVC cache by their lock hash (what the lock says, not what a later run may
    write); uncached ones from the workspace. ``dest`` mirrors ``prefix/``. Returns the number of files.
    """
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
    cache = cache_dir(root) / "files" / "md5"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path = Path(out["path"])
            if path.parts[: len(Path(prefix).parts)] != Path(prefix).parts:
                continue
            rel = path.relative_to(prefix)
            digest = str(out.get("md5") or "")
            obj = cache / digest[:2] / digest[2:]
            if digest.endswith(".dir") and obj.exists():
                for entry in json.loads(obj.read_text(encoding="utf-8")):
                    h = entry["md5"]
                    link_or_copy(cache / h[:2] / h[2:], tmp / rel / entry["relpath"])
                    count += 1
            elif obj.exists():
                link_or_copy(obj, tmp / rel)
                count += 1
            elif (root / path).is_file():  # cache: false: a copy (the workspace file is rewritten in place)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / path, tmp / rel)
                count += 1
            else:
                raise DvcError(f"{path} (stage output in dvc.lock) is neither in the DVC cache nor in {root}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return count
