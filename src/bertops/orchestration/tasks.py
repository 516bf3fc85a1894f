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
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig, load_config
from bertops.model.bundle import META_FILE
from bertops.model.lineage import describe, planned_architecture
from bertops.model.presets import Architecture, resolve_architecture
from bertops.orchestration import dvc_ops
from bertops.orchestration.ray_jobs import JobSpec, python_entrypoint
from bertops.orchestration.retrain_params import conf_to_overrides, validate_conf
from bertops.registry.client import connect
from bertops.registry.registry import TAG_DATA_OUTPUTS, TAG_DVC_REV
from bertops.serving import live_client as live
from bertops.serving.client import ServingClientError

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
PRETRAIN_STATE = "orchestration/pretrain_state.json"
# A rough training throughput of one CPU worker, in FLOP/s (calibrated on the 2-core reference machine of
# docs/benchmarks.md: tiny ~11k tokens/s); plus the start-up of one Ray job (processes, TensorFlow import).
CPU_FLOPS = 3e10
JOB_STARTUP_S = 60.0
RUN_DATA = "runs"  # <state_dir>/runs/<run>/data: the data one retrain reads (hard links into the DVC cache)
KEEP_RUN_DATA = 5
# The lineage a retrain hands its Ray jobs (bertops.training.tracking tags the MLflow run with it).
LINEAGE_ENV = {
    "data_version": "BERTOPS_DATA_VERSION",
    "dvc_experiment": "BERTOPS_DVC_EXPERIMENT",
    "dvc_rev": "BERTOPS_DVC_REV",
    "overrides": "BERTOPS_OVERRIDES",
}


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
class RetrainRefused(ValueError):
    """A retrain that cannot work as asked (refused before any work starts); the message says the fix."""


def check_params(params: Mapping[str, Any], root: Path | None = None) -> dict[str, Any]:
    """First task of a retrain: refuse bad params (schema, every config key, combinations), log the plan."""
    root = root or project_root()
    overrides = run_overrides(params)
    cfg = load_config(root / PARAMS_FILE, overrides)
    mode = str(params.get("pretraining") or "auto")
    refuse_impossible(cfg, mode, root)
    log.info("retrain overrides: %s", overrides or "(none)")
    log.info("resolved config:\n%s", json.dumps(cfg.to_dict(), indent=1))
    for line in plan_lines(cfg, mode, overrides, root):
        log.info("plan: %s", line)
    return {"overrides": overrides, "task": cfg.finetune.task, "preset": cfg.model.preset}


def refuse_impossible(cfg: BertopsConfig, mode: str, root: Path) -> None:
    """Raise :class:`RetrainRefused` for a combination that can only fail later (e.g. in fine-tuning)."""
    if cfg.finetune.init != "pretrained" or mode != "skip":
        return
    bundle = Path(cfg.pretrain.output_dir)
    bundle = bundle if bundle.is_absolute() else root / bundle
    if not (bundle / META_FILE).is_file():
        raise RetrainRefused(
            f"finetune.init='pretrained' with pretraining 'skip', but {bundle} is not a bertops bundle (no "
            f"{META_FILE}): nothing pretrained to start from. Use pretraining 'auto'/'always', or "
            "init_checkpoint 'scratch' (or hf:<dir>)"
        )


def plan_lines(cfg: BertopsConfig, mode: str, overrides: list[str], root: Path) -> list[str]:
    """What a retrain will do, in a few lines (printed by ``bertops retrain``, logged by ``check_params``)."""
    data = dvc_ops.data_overrides(overrides, dvc_ops.param_keys(root))
    lines = [
        "data: " + (f"DVC experiment (`dvc exp run`) with {', '.join(data)}; params.yaml stays as it is"
                    if data else "`dvc repro` of params.yaml (stages whose inputs changed)"),
    ]  # fmt: skip
    corpus_changes = any(k.split("=", 1)[0].startswith(dvc_ops.CORPUS_PARAMS) for k in data)
    if corpus_changes and mode == "auto" and cfg.finetune.init == "pretrained":
        needed, why = True, "the data overrides change the pretraining corpus"
    else:
        needed, why = pretrain_decision(cfg, mode, dvc_ops.corpus_version(root), root)
    seconds = 0.0
    arch, arch_text = _planned_model(cfg, root)
    if needed:
        pre = cfg.pretrain
        pre_s = _train_seconds(
            resolve_architecture(cfg.model, cfg.vocab.vocab_size), pre.max_steps, pre.batch_size,
            cfg.pretrain_data.max_seq_length, pre.scaling,
        )  # fmt: skip
        seconds += pre_s
        lines.append(f"pretraining: yes, {pre.max_steps} steps, ~{_minutes(pre_s)} ({why})")
    else:
        lines.append(f"pretraining: no ({why})")
    ft = cfg.finetune
    # Data overrides other than the pretraining instances' change the fine-tuning records (another source,
    # split, vocabulary...): the workspace's records would give another data set's count.
    records_change = [k.split("=", 1)[0] for k in data if not k.startswith("pretrain_data.")]
    n_train = None if records_change else _train_examples(cfg, root)
    steps = ft.max_steps or (ft.epochs * -(-n_train // ft.batch_size) if n_train else None)
    what = f"at most {ft.max_steps} steps" if ft.max_steps else f"{ft.epochs} epochs"
    if steps:
        ft_s = _train_seconds(arch, steps, ft.batch_size, cfg.finetune_data.max_seq_length, ft.scaling)
        seconds += ft_s
        what += f" (~{steps} steps, ~{_minutes(ft_s)})"
    elif records_change:
        what += f" (steps known once the data is prepared: {', '.join(records_change)} change the records)"
    else:
        what += " (steps known once the data is prepared: no fine-tuning records yet)"
    lines.append(f"fine-tuning: {ft.task}, init {ft.init}, {what}, batch {ft.batch_size}")
    lines.append(f"model: {arch_text}")
    lines.append(f"then: evaluate, register, promotion gate (mode {cfg.promotion.mode}), update serving")
    lines.append(f"estimate: ~{_minutes(seconds)} of training (rough: CPU throughput, job start-up)")
    return lines


def _planned_model(cfg: BertopsConfig, root: Path) -> tuple[Architecture, str]:
    """The fine-tune's architecture (the init checkpoint's own, or the ``model`` section's) and a line saying it."""
    init = cfg.finetune.init
    kind, sep, rest = init.partition(":")
    if sep and kind in ("hf", "google", "bundle", "bertops") and not Path(rest).is_absolute():
        init = f"{kind}:{root / rest}"
    try:
        arch = planned_architecture(cfg.model, _vocab_size(cfg, root), init)
    except (OSError, ValueError) as exc:  # a missing or bad checkpoint: training refuses it with the details
        arch = resolve_architecture(cfg.model, cfg.vocab.vocab_size)
        return arch, f"unknown until the checkpoint is read ({exc})"
    source = "the model section" if init in ("scratch", "pretrained") else f"the checkpoint's config ({init})"
    return arch, f"{describe(arch)}, from {source}"


def _vocab_size(cfg: BertopsConfig, root: Path) -> int:
    """Tokens of the vocabulary the records use: the built one when it exists, else ``vocab.vocab_size``."""
    data_dir = Path(cfg.project.data_dir)
    vocab = (data_dir if data_dir.is_absolute() else root / data_dir) / "vocab" / "vocab.txt"
    if vocab.is_file():
        return sum(1 for line in vocab.read_text(encoding="utf-8").splitlines() if line)
    return cfg.vocab.vocab_size


def _train_seconds(arch: Architecture, steps: int, batch: int, seq: int, scaling: Any) -> float:
    """A rough wall time: 6 FLOPs per parameter and token (forward + backward) at :data:`CPU_FLOPS` a worker."""
    per_token = 6 * (arch.num_parameters() - arch.vocabulary_size * arch.hidden_dim)  # lookups cost ~nothing
    rate = CPU_FLOPS * max(1, scaling.num_workers) * (20 if scaling.use_gpu else 1)
    return JOB_STARTUP_S + steps * batch * seq * per_token / rate


def _train_examples(cfg: BertopsConfig, root: Path) -> int | None:
    """Training examples in the workspace's fine-tuning records (None before the first ``dvc repro``)."""
    data_dir = Path(cfg.project.data_dir)
    manifest = (data_dir if data_dir.is_absolute() else root / data_dir) / "finetune" / cfg.finetune.task
    try:
        return int(
            json.loads((manifest / "manifest.json").read_text(encoding="utf-8"))["num_examples"]["train"]
        )
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


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


def run_data_dir(cfg: BertopsConfig, root: Path, run_id: str) -> Path:
    """Where one retrain's data lives: ``<state_dir>/runs/<run>/data``."""
    return state_path(cfg, root, RUN_DATA) / dvc_ops.experiment_name(run_id) / "data"


def _prune_run_data(base: Path, keep: int = KEEP_RUN_DATA) -> None:
    runs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _git_head(root: Path) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def prepare_run_data(params: Mapping[str, Any], run_id: str, root: Path | None = None) -> dict[str, Any]:
    """The data of one retrain, made the DVC way and set aside for this run alone.

    No data overrides: ``dvc repro`` of ``params.yaml``. Data overrides: a DVC experiment in the workspace
    (``dvc exp run --name retrain-<run> --set-param ...``, listed by ``dvc exp show`` with its params and
    metrics), after which params.yaml, dvc.lock and the data are restored (``dvc checkout``: from the cache, no
    stage runs). Either way the run's outputs are hard-linked from the DVC cache into
    ``<state_dir>/runs/<run>/data``, which training, evaluation and the gate read (``project.data_dir``), so a
    later run or ``bert_data`` cannot change them underneath. Callers serialise (the ``dvc`` pool).
    """
    root = root or project_root()
    overrides = run_overrides(params)
    cfg = load_config(root / PARAMS_FILE, overrides)
    data = dvc_ops.data_overrides(overrides, dvc_ops.param_keys(root))
    dest = run_data_dir(cfg, root, run_id)
    experiment = None
    if data:
        dvc_ops.pull(root)
        experiment = dvc_ops.experiment_name(run_id)
        with dvc_ops.workspace_restored(root):
            rev = dvc_ops.exp_run(root, experiment, data)
            version, corpus = dvc_ops.data_version(root), dvc_ops.corpus_version(root)
            outputs = dvc_ops.output_hashes(root)
            files = dvc_ops.snapshot_outputs(root, dest, cfg.project.data_dir)
            dvc_ops.push(root)
        log.info("DVC experiment %s (%s): data version %s, workspace restored", experiment, rev[:10], version)
    else:
        cycle = data_cycle(root)
        rev = _git_head(root)
        version, corpus = cycle["data_version"], cycle["corpus_version"]
        outputs = dvc_ops.output_hashes(root)
        files = dvc_ops.snapshot_outputs(root, dest, cfg.project.data_dir)
        log.info("dvc repro of params.yaml: data version %s", version)
    _prune_run_data(dest.parent.parent)
    log.info("%d data files for this run in %s", files, dest)
    return {
        "data_version": version,
        "corpus_version": corpus,
        "data_dir": str(dest),
        "dvc_experiment": experiment,
        "dvc_rev": rev,
        "data_overrides": data,
        "data_outputs": outputs,
    }


def registry_lineage(prepared: Mapping[str, Any], overrides: list[str]) -> dict[str, str]:
    """The model version tags that say what was asked: the exact overrides and the DVC experiment/commit."""
    own_data = f"project.data_dir={prepared.get('data_dir')}"  # set by the DAG, not asked for
    tags = {"bertops.overrides": json.dumps([o for o in overrides if o != own_data])}
    if prepared.get("dvc_experiment"):
        tags["bertops.dvc_experiment"] = str(prepared["dvc_experiment"])
    if prepared.get("dvc_rev"):
        tags[TAG_DVC_REV] = str(prepared["dvc_rev"])
    if prepared.get(
        "data_outputs"
    ):  # each stage output's hash: `bertops reproduce` names the first that differs
        tags[TAG_DATA_OUTPUTS] = json.dumps(prepared["data_outputs"], sort_keys=True, separators=(",", ":"))
    for key in ("drift_report", "drift_run_id"):  # a retrain triggered by bert_monitor's bertops_drift Asset
        if prepared.get(key):
            tags[f"bertops.{key}"] = str(prepared[key])
    return tags


def lineage_env(prepared: Mapping[str, Any], overrides: list[str]) -> dict[str, str]:
    """The environment that tells a training job its lineage (see :data:`LINEAGE_ENV`)."""
    values = {**{k: prepared.get(k) for k in LINEAGE_ENV}, "overrides": json.dumps(overrides)}
    return {LINEAGE_ENV[k]: str(v) for k, v in values.items() if v}


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


# ------------------------------------------------------------------------------------------- live trial
class LiveTrialRefused(RuntimeError):
    """The candidate failed on live traffic (or could not be put on it): the alias does not move."""


def live_trial_enabled(cfg: BertopsConfig) -> bool:
    return cfg.promotion.shadow.enabled or cfg.promotion.canary.enabled


def live_trial(
    cfg: BertopsConfig, name: str, version: str, wait_for_review: bool = False, poll_s: float = 1.0
) -> dict[str, Any]:
    """The candidate on the running service's live traffic, after the gate and before the alias moves:
    ``promotion.shadow`` (mirrored requests, judged by :func:`~bertops.registry.live.shadow_decision` and
    logged to the version by :func:`~bertops.registry.live.record_shadow`), then ``promotion.canary`` (each
    share until :func:`~bertops.registry.live.canary_verdict` says widen; the service rolls back by itself
    past the limits). ``wait_for_review``: a reviewer's approval tag is awaited after the shadow report is on
    the version and before any client is answered by the candidate.

    Returns ``{"passed", "reason", "serving_url", "shadow", "shadow_run_id", "canary"}``. On success the
    candidate stays on the service at the last canary share (or loaded, after shadow only) until the alias
    moves and the reload takes it over; on refusal the service is back on the champion alone.
    """

    url = serving_url(cfg)
    out: dict[str, Any] = {"passed": False, "serving_url": url, "shadow": None, "canary": []}
    try:
        if cfg.promotion.shadow.enabled:
            _shadow_phase(cfg, name, version, url, poll_s, out)
        if wait_for_review and cfg.promotion.canary.enabled:
            _await_review(cfg, name, version)
        if cfg.promotion.canary.enabled:
            if not cfg.promotion.shadow.enabled:
                live.start_shadow(url, name, version, cfg.promotion.shadow)
                live.stop_shadow(url, name)  # loaded and warmed up; no mirroring
            _canary_phase(cfg, name, version, url, poll_s, out)
    except (LiveTrialRefused, ServingClientError) as exc:
        out["reason"] = str(exc)
        drop_candidate(cfg, name)
        log.warning("%s v%s refused on live traffic: %s", name, version, exc)
        return out
    out["passed"] = True
    shares = ", ".join(f"{step['percent']}%" for step in out["canary"])
    parts = [
        f"shadow: {out['shadow']['reason']}" if out["shadow"] else "",
        f"canary {shares} healthy" if shares else "",
    ]
    out["reason"] = "; ".join(p for p in parts if p)
    return out


def drop_candidate(cfg: BertopsConfig, name: str) -> None:
    """Best effort: the service answers with the champion alone (nothing listening is fine)."""

    try:
        live.rollback(serving_url(cfg), name)
    except ServingClientError as exc:
        log.warning("could not drop the candidate of %s: %s", name, exc)


def _shadow_phase(cfg: BertopsConfig, name: str, version: str, url: str, poll_s: float, out: dict) -> None:
    # Inside: registry.live pulls numpy and the gate's evaluation metrics, which DAG parsing does not need.
    from bertops.registry import registry as reg
    from bertops.registry.live import (
        TAG_SHADOW,
        TAG_SHADOW_REASON,
        ShadowReport,
        record_shadow,
        shadow_decision,
    )

    sh = cfg.promotion.shadow
    try:
        live.start_shadow(url, name, version, sh)
    except ServingClientError as exc:  # e.g. 422: it failed to load or to warm up, so it got no traffic
        why = f"not put on live traffic: {exc}"
        reg.set_tags(
            connect(cfg.tracking_uri()), name, version, {TAG_SHADOW: "failed", TAG_SHADOW_REASON: why}
        )
        raise LiveTrialRefused(f"shadow: {why}") from None
    deadline = time.monotonic() + sh.duration_s
    state = _trial_state(url, name, version)
    while state["report"]["compared"] < sh.requests and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = _trial_state(url, name, version)
    live.stop_shadow(url, name)
    report = ShadowReport(**_trial_state(url, name, version)["report"])
    decision = shadow_decision(report, sh, version)
    out["shadow_run_id"] = record_shadow(connect(cfg.tracking_uri()), name, version, report, decision)
    out["shadow"] = {**decision.to_dict(), "report": asdict(report)}
    if not decision.passed:
        raise LiveTrialRefused(f"shadow: {decision.reason}")


def _await_review(cfg: BertopsConfig, name: str, version: str) -> None:
    from bertops.registry.promote import APPROVED, wait_for_approval

    outcome = wait_for_approval(connect(cfg.tracking_uri()), name, version, cfg.promotion.approval_timeout_s)
    if outcome != APPROVED:
        raise LiveTrialRefused(
            f"approval {outcome} after {cfg.promotion.approval_timeout_s}s (before canary)"
        )


def _canary_phase(cfg: BertopsConfig, name: str, version: str, url: str, poll_s: float, out: dict) -> None:
    from bertops.registry import registry as reg
    from bertops.registry.live import TAG_CANARY, TAG_CANARY_REASON

    try:
        _canary_steps(cfg, name, version, url, poll_s, out)
    except LiveTrialRefused as exc:
        reg.set_tags(
            connect(cfg.tracking_uri()), name, version, {TAG_CANARY: "failed", TAG_CANARY_REASON: str(exc)}
        )
        raise
    shares = ", ".join(
        f"{s['percent']}% ({s['requests']} requests, {s['errors']} errors)" for s in out["canary"]
    )
    reg.set_tags(
        connect(cfg.tracking_uri()), name, version, {TAG_CANARY: "passed", TAG_CANARY_REASON: shares}
    )


def _canary_steps(cfg: BertopsConfig, name: str, version: str, url: str, poll_s: float, out: dict) -> None:
    from bertops.registry.live import canary_shares

    ca = cfg.promotion.canary
    for share in canary_shares(ca):
        live.set_canary(url, name, share, ca.model_dump(mode="json"))
        deadline = time.monotonic() + ca.step_duration_s
        while True:
            step = _trial_state(url, name, version)["canary"]
            action, reason = step["verdict"]["action"], step["verdict"]["reason"]
            if action == "widen":
                out["canary"].append(
                    {"percent": share, "requests": step["requests"], "errors": step["errors"]}
                )
                break
            if action == "rollback":
                raise LiveTrialRefused(f"canary at {share}%: {reason}")
            if time.monotonic() >= deadline:
                raise LiveTrialRefused(f"canary at {share}%: {reason} after {ca.step_duration_s}s")
            time.sleep(poll_s)


def _trial_state(url: str, name: str, version: str) -> dict[str, Any]:
    """The service's candidate state; refused when the candidate is gone (rolled back by the service)."""

    state = live.candidate(url, name)
    if state.get("candidate_version") != version or state.get("phase") in ("ended", "none"):
        raise LiveTrialRefused(
            f"the candidate v{version} is no longer on {url}: {state.get('ended') or state}"
        )
    return state
