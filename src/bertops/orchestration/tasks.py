"""What each task of ``bert_data`` and ``bert_retrain`` does, as plain functions (no Airflow imports).

The DAG files only wire these together. Each function takes small ids and returns small ids (XCom carries
nothing else), and is safe to re-run: DVC skips unchanged stages, Ray jobs are re-attached (see
:mod:`bertops.orchestration.ray_jobs`), registration and promotion are idempotent in :mod:`bertops.registry`.

Endpoints come from the config, overridden by the environment the local stack gives Airflow:
``BERTOPS_RAY_DASHBOARD_URL``, ``BERTOPS_SERVING_URL``, ``MLFLOW_TRACKING_URI``, ``BERTOPS_PROJECT_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig, load_config
from bertops.orchestration import dvc_ops
from bertops.orchestration.ray_jobs import JobSpec, python_entrypoint
from bertops.orchestration.retrain_params import conf_to_overrides, validate_conf

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
PRETRAIN_STATE = "orchestration/pretrain_state.json"


# ------------------------------------------------------------------------------------------- context
def project_root() -> Path:
    """The bertops checkout the tasks work in: ``BERTOPS_PROJECT_DIR``, else the one this package lives in."""
    env = os.environ.get("BERTOPS_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[3]


def run_overrides(params: Mapping[str, Any]) -> list[str]:
    """The ``params.yaml`` overrides a DAG run's params stand for (validated against the one schema)."""
    conf = {k: v for k, v in dict(params).items() if v is not None or k in ("pretraining", "overrides")}
    return conf_to_overrides(validate_conf(conf))


def run_config(params: Mapping[str, Any], root: Path | None = None) -> BertopsConfig:
    """The resolved config of a DAG run: ``params.yaml`` plus the run's overrides, validated once."""
    root = root or project_root()
    return load_config(root / PARAMS_FILE, run_overrides(params))


def ray_dashboard_url(cfg: BertopsConfig) -> str:
    return os.environ.get("BERTOPS_RAY_DASHBOARD_URL") or cfg.orchestration.ray_dashboard_url


def serving_url(cfg: BertopsConfig) -> str:
    env = os.environ.get("BERTOPS_SERVING_URL")
    if env:
        return env
    s = cfg.serving
    return f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"


def state_path(cfg: BertopsConfig, root: Path, name: str) -> Path:
    base = cfg.state_dir if cfg.state_dir.is_absolute() else root / cfg.state_dir
    return base / name


# ------------------------------------------------------------------------------------------- data
def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """First task of a retrain: refuse bad params (schema, then every config key) before any work starts."""
    overrides = run_overrides(params)
    cfg = load_config(project_root() / PARAMS_FILE, overrides)
    log.info("retrain overrides: %s", overrides or "(none)")
    log.info("resolved config:\n%s", json.dumps(cfg.to_dict(), indent=1))
    return {"overrides": len(overrides), "task": cfg.finetune.task, "preset": cfg.model.preset}


def data_cycle(root: Path | None = None) -> dict[str, Any]:
    """pull -> ``dvc repro`` -> push. Returns the data and corpus versions before/after and whether data changed."""
    root = root or project_root()
    before = dvc_ops.data_version(root)
    dvc_ops.pull(root)
    dvc_ops.repro(root)
    dvc_ops.push(root)
    after = dvc_ops.data_version(root)
    changed = after != before
    log.info("data version %s -> %s (%s)", before, after, "changed" if changed else "unchanged")
    return {
        "data_version": after,
        "previous_data_version": before,
        "changed": changed,
        "corpus_version": dvc_ops.corpus_version(root),
    }


# ------------------------------------------------------------------------------------------- training
def pretrain_decision(
    cfg: BertopsConfig, mode: str, corpus_version: str | None, root: Path | None = None
) -> tuple[bool, str]:
    """Whether to pretrain, and why: asked for, skipped, or (auto) the corpus/model changed since the last run."""
    root = root or project_root()
    if mode == "skip":
        return False, "skipped by the run's parameters"
    if mode == "always":
        return True, "asked for by the run's parameters"
    if cfg.finetune.init != "pretrained":
        return False, f"fine-tuning starts from {cfg.finetune.init!r}, not bertops pretraining"
    state_file = state_path(cfg, root, PRETRAIN_STATE)
    if not state_file.exists():
        return True, "no earlier pretraining recorded"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state.get("corpus_version") != corpus_version:
        return True, f"corpus changed ({state.get('corpus_version')} -> {corpus_version})"
    if state.get("model") != cfg.model.model_dump(mode="json"):
        return True, "model architecture changed"
    bundle = state.get("bundle_dir")
    if bundle and not Path(bundle).exists():
        return True, f"the last pretrained model {bundle} is gone"
    return False, f"corpus unchanged since pretraining run {state.get('run_id')}"


def record_pretraining(
    cfg: BertopsConfig, result: Mapping[str, Any], corpus_version: str | None, root: Path | None = None
) -> None:
    """Remember what was pretrained on which corpus (atomically), for the next run's decision."""
    root = root or project_root()
    path = state_path(cfg, root, PRETRAIN_STATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "corpus_version": corpus_version,
        "model": cfg.model.model_dump(mode="json"),
        "run_id": result.get("run_id"),
        "bundle_dir": result.get("bundle_dir"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(path)


def training_job(
    kind: str,
    cfg: BertopsConfig,
    overrides: list[str],
    airflow_run_id: str | None,
    extra_env: Mapping[str, str] | None = None,
    root: Path | None = None,
    run_name: str | None = None,
) -> JobSpec:
    """The Ray job of ``ray_jobs/<kind>.py`` with this run's overrides and the tracking/lineage environment.

    ``run_name`` (the task's submission id): a job re-submitted after a failure resumes that Ray Train run
    from its latest checkpoint instead of starting over.
    """
    root = root or project_root()
    args = ["--params", PARAMS_FILE]
    if run_name:
        args += ["--run-name", run_name]
    for text in overrides:
        args += ["--set", text]
    env = {
        "MLFLOW_TRACKING_URI": cfg.tracking_uri(),
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]),
        "PYTHONUNBUFFERED": "1",
    }
    if airflow_run_id:
        env["BERTOPS_AIRFLOW_RUN_ID"] = airflow_run_id
    env.update(extra_env or {})
    python = cfg.orchestration.job_python or sys.executable
    workdir = cfg.orchestration.job_workdir or str(root)
    return JobSpec(
        entrypoint=python_entrypoint(f"ray_jobs/{kind}.py", args, python=python, workdir=workdir),
        runtime_env={"env_vars": env},
        metadata={"bertops.kind": kind, **({"airflow_run_id": airflow_run_id} if airflow_run_id else {})},
    )


def require_result(kind: str, result: Mapping[str, Any] | None, submission_id: str) -> dict[str, Any]:
    """The job's BERTOPS_RESULT, checked for the fields later tasks need."""
    if not result:
        raise RuntimeError(f"Ray job {submission_id} ({kind}) succeeded but printed no BERTOPS_RESULT line")
    missing = [k for k in ("run_id", "bundle_dir") if not result.get(k)]
    if missing:
        raise RuntimeError(f"Ray job {submission_id} ({kind}): BERTOPS_RESULT lacks {', '.join(missing)}")
    return dict(result)
