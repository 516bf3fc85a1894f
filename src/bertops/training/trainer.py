"""The training driver: pre-flight checks, the MLflow run, Ray Train (``backend.make_trainer``), the bundle.

    from bertops.config import load_config
    from bertops.training.trainer import finetune, pretrain
    result = pretrain(load_config("params.yaml"))          # -> TrainResult(run_id, bundle_dir, metrics, ...)
    result = finetune(load_config("params.yaml", ["finetune.init=pretrained"]))

Ray: ``scaling.address`` / ``RAY_ADDRESS`` / a local Ray started on demand (``cfg.ray_address``). The same
code runs on a laptop, an existing cluster and GPU workers (``scaling.use_gpu``, one GPU per worker): only the
configuration changes. Before ``fit`` the cluster's resources are checked against the request, so a run that
cannot be placed fails at once with a message rather than waiting forever.

A run is named (``<kind>.run_name`` or ``<kind>-<UTC time>``); Ray keeps its checkpoints under
``<state_dir>/ray_results/<name>``. Starting a run with the name of an interrupted one resumes it from its
latest checkpoint (same step, optimizer state and MLflow run). Worker failures are retried in-run up to
``scaling.max_failures`` times, each time from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bertops.config import BertopsConfig, FinetuneConfig, PretrainConfig, ScalingSettings
from bertops.model.lineage import trained_record
from bertops.paths import LABEL_MAP, MANIFEST, DataLayout
from bertops.training.plan import Kind, RunPlan
from bertops.training.tracking import TAG_TRAINED

log = logging.getLogger(__name__)

RESULT_PREFIX = "BERTOPS_RESULT"  # ray_jobs print one line "BERTOPS_RESULT {json}" for the orchestrator


class TrainingSetupError(RuntimeError):
    """A run that cannot start: missing data, inconsistent config, or resources the cluster does not have."""


@dataclass
class TrainResult:
    """What a training run produced: its MLflow run, the bundle directory and the final metrics."""

    kind: str
    run_id: str
    run_name: str
    bundle_dir: str
    metrics: dict[str, float]
    checkpoint_path: str | None = None
    pretrain_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=str)

    def result_line(self) -> str:
        """The single line a Ray job prints so that its caller can read the result from the job logs."""
        return f"{RESULT_PREFIX} {self.to_json()}"


# ----------------------------------------------------------------------------------------- planning
def _section(cfg: BertopsConfig, kind: Kind) -> PretrainConfig | FinetuneConfig:
    return cfg.pretrain if kind == "pretrain" else cfg.finetune


def _check_records(manifest_path: Path, splits: list[str]) -> dict[str, Any]:
    from bertops.data.records import load_manifest, split_files

    if not manifest_path.is_file():
        raise TrainingSetupError(
            f"no training data: {manifest_path} does not exist (run the data pipeline first: dvc repro)"
        )
    manifest = load_manifest(manifest_path)
    for split in splits:
        try:
            files = split_files(manifest_path, split)
        except KeyError as exc:
            raise TrainingSetupError(str(exc)) from None
        missing = [f for f in files if not Path(f).is_file()]
        if not files or missing:
            raise TrainingSetupError(
                f"{manifest_path}: split {split!r} has no record files (missing: {missing})"
            )
        if int(manifest["num_examples"].get(split, 0)) <= 0:
            raise TrainingSetupError(f"{manifest_path}: split {split!r} has no examples")
    return manifest


def _same_vocab(a: Path, b: Path) -> bool:
    return a.read_bytes().split() == b.read_bytes().split()


def _resolve_init(cfg: BertopsConfig, vocab_file: Path, key: str = "finetune.init") -> tuple[str, str | None]:
    """``finetune.init`` (or ``pretrain.init``) -> (plan init spec with an absolute path, the pretraining run id
    it links to)."""
    from bertops.model.bundle import VOCAB_FILE, BundleError, read_meta

    init = cfg.pretrain.init if key == "pretrain.init" else cfg.finetune.init
    if init == "scratch":
        return "scratch", None
    if init.startswith(("hf:", "google:")):
        kind, _, directory = init.partition(":")
        path = Path(directory).resolve()
        if not path.is_dir():
            raise TrainingSetupError(f"{key}={init!r}: checkpoint directory {path} does not exist")
        ckpt_vocab = path / "vocab.txt"
        if ckpt_vocab.is_file() and not _same_vocab(ckpt_vocab, vocab_file):
            raise TrainingSetupError(
                f"{key}={init!r}: the records were built with {vocab_file}, which differs from the "
                f"checkpoint's {ckpt_vocab}; set vocab.vocab_file={ckpt_vocab} and rebuild the data (dvc repro)"
            )
        return f"{kind}:{path}", None
    directory = Path(cfg.pretrain.output_dir) if init == "pretrained" else Path(init.removeprefix("bertops:"))
    try:
        meta = read_meta(directory)
    except BundleError as exc:
        hint = " (run `bertops pretrain` first)" if init == "pretrained" else ""
        raise TrainingSetupError(f"{key}={init!r}: {exc}{hint}") from None
    if not _same_vocab(directory / VOCAB_FILE, vocab_file):
        raise TrainingSetupError(
            f"{key}={init!r}: {directory / VOCAB_FILE} differs from the records' vocabulary {vocab_file}"
        )
    pretrain_run = (
        meta.get("source_run_id") if meta.get("task") == "pretraining" else meta.get("pretrain_run_id")
    )
    return f"bundle:{directory.resolve()}", pretrain_run


def make_plan(cfg: BertopsConfig, kind: Kind, run_id: str = "", data_version: str = "") -> RunPlan:
    """Resolve config + manifests into a :class:`RunPlan`; raises :class:`TrainingSetupError` on bad input."""
    layout = DataLayout(Path(cfg.project.data_dir))
    section = _section(cfg, kind)
    scaling = section.scaling
    vocab_file = layout.vocab_file
    if not vocab_file.is_file():
        raise TrainingSetupError(
            f"no vocabulary: {vocab_file} does not exist (run the data pipeline: dvc repro)"
        )
    opt = section.optimizer.model_dump()
    if kind == "pretrain":
        assert isinstance(section, PretrainConfig)
        manifest_path = layout.pretrain_dir / MANIFEST
        manifest = _check_records(manifest_path, ["train", "heldout"])
        task, labels = "pretraining", None
        init, pretrain_run = _resolve_init(cfg, vocab_file, "pretrain.init")  # continued pretraining
        total, per_epoch = section.max_steps, None
        eval_every, eval_batches, patience, test_split = (
            section.eval_every_steps,
            section.eval_batches,
            None,
            None,
        )
        eval_split = "heldout"
    else:
        assert isinstance(section, FinetuneConfig)
        task = section.task
        manifest_path = layout.finetune_task_dir(task) / MANIFEST
        manifest = _check_records(manifest_path, ["train", "validation", "test"])
        labels = manifest.get("label_map")
        label_file = manifest_path.parent / LABEL_MAP
        if labels is None and label_file.is_file():
            labels = json.loads(label_file.read_text(encoding="utf-8"))["labels"]
        if not labels or len(labels) < 2:
            raise TrainingSetupError(f"{manifest_path}: no label map with at least two labels")
        init, pretrain_run = _resolve_init(cfg, vocab_file)
        opt["learning_rate"] = section.learning_rate  # finetune.learning_rate is the fine-tuning peak rate
        global_batch = (
            section.batch_size * section.optimizer.gradient_accumulation_steps * scaling.num_workers
        )
        n_train = int(manifest["num_examples"]["train"])
        per_epoch = n_train // global_batch
        if per_epoch < 1:
            raise TrainingSetupError(
                f"{manifest_path}: the train split has {n_train} examples, fewer than one global batch of "
                f"{global_batch} (finetune.batch_size x gradient_accumulation_steps x scaling.num_workers)"
            )
        total = section.epochs * per_epoch
        if section.max_steps is not None:
            total = min(total, section.max_steps)
        eval_every, eval_batches, patience = per_epoch, None, section.early_stopping_patience
        eval_split, test_split = "validation", "test"
    settings = _record_settings(cfg, manifest, manifest_path, init)
    return RunPlan(
        kind=kind,
        task=task,
        manifest=str(manifest_path.resolve()),
        train_split="train",
        eval_split=eval_split,
        test_split=test_split,
        vocab_size=int(manifest.get("vocab_size") or 0) or _count_lines(vocab_file),
        max_seq_length=int(manifest["max_seq_length"]),
        max_predictions_per_seq=manifest.get("max_predictions_per_seq"),
        labels=list(labels) if labels else None,
        model=cfg.model.model_dump(),
        optimizer=opt,
        init=init,
        batch_size=section.batch_size,
        accumulation_steps=section.optimizer.gradient_accumulation_steps,
        num_workers=scaling.num_workers,
        total_steps=total,
        steps_per_epoch=per_epoch,
        eval_every_steps=eval_every,
        eval_batches=eval_batches,
        checkpoint_every_steps=section.checkpoint_every_steps,
        log_every_steps=section.log_every_steps,
        early_stopping_patience=patience,
        class_weights=getattr(section, "class_weights", "none"),
        jit_compile=section.jit_compile,
        sequence_buckets=list(section.sequence_buckets),
        seed=cfg.project.seed,
        tracking_uri=cfg.tracking_uri(),
        run_id=run_id,
        vocab_file=str(vocab_file.resolve()),
        lowercase=settings.lowercase,
        strip_accents=settings.strip_accents,
        data_version=data_version,
        pretrain_run_id=pretrain_run,
        tokenizer=settings.to_dict(),
        deterministic=cfg.project.deterministic,
    )


_VOCAB_SETTINGS = ("lowercase", "strip_accents", "max_input_chars_per_word")


def _record_settings(cfg: BertopsConfig, manifest: dict[str, Any], manifest_path: Path, init: str) -> Any:
    """The records' encoding settings (they go into the bundle), refused when ``params.yaml`` or the initial
    bundle tokenises differently: the model would be trained or served on text encoded another way."""
    from bertops.data.tokenizer import EncodingSettings, VocabError
    from bertops.model.bundle import BundleError, bundle_settings, read_meta

    try:
        settings = EncodingSettings.of_records(manifest, str(manifest_path))
    except VocabError as exc:
        raise TrainingSetupError(str(exc)) from None
    stale = [f"vocab.{k}={getattr(cfg.vocab, k)!r} (records: {getattr(settings, k)!r})"
             for k in _VOCAB_SETTINGS if getattr(cfg.vocab, k) != getattr(settings, k)]  # fmt: skip
    if stale:
        raise TrainingSetupError(
            f"{manifest_path}: the records were built with other tokenizer settings than params.yaml has: "
            f"{', '.join(stale)}; rebuild them (dvc repro / bertops data repro)"
        )
    if init.startswith("bundle:"):
        directory = Path(init.removeprefix("bundle:"))
        try:
            start = bundle_settings(directory, read_meta(directory))
        except BundleError as exc:
            raise TrainingSetupError(f"finetune.init: {exc}") from None
        differ = [f"{k}: {getattr(start, k)!r} there, {getattr(settings, k)!r} in the records"
                  for k in _VOCAB_SETTINGS if getattr(start, k) != getattr(settings, k)]  # fmt: skip
        if differ:
            raise TrainingSetupError(
                f"finetune.init: {directory} was trained on text tokenised differently ({'; '.join(differ)})"
            )
    return settings


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# ----------------------------------------------------------------------------------------------- Ray
def _connect_ray(cfg: BertopsConfig, scaling: ScalingSettings) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address(scaling)
    # `bertops reproduce --train` runs a version's own commit from a scratch worktree: its Ray workers import
    # bertops from there too, not from the installed checkout.
    src = os.environ.get(REPRODUCE_SRC_ENV)
    runtime_env = {"env_vars": {"PYTHONPATH": src}} if src else None
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        log.info("starting a local Ray instance")
        ray.init(include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)


def check_resources(scaling: ScalingSettings, total: dict[str, float] | None = None) -> None:
    """Fail fast when the cluster cannot place the workers (CPU and GPU totals; nodes not considered)."""
    if total is None:
        import ray

        total = ray.cluster_resources()
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    have_cpu = total.get("CPU", 0.0)
    if need_cpu > have_cpu:
        raise TrainingSetupError(
            f"scaling asks for {scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs = {need_cpu:g} CPUs, "
            f"the Ray cluster has {have_cpu:g}: lower scaling.num_workers or scaling.cpus_per_worker"
        )
    if scaling.use_gpu:
        need_gpu = scaling.num_workers * scaling.gpus_per_worker
        have_gpu = total.get("GPU", 0.0)
        if need_gpu > have_gpu:
            raise TrainingSetupError(
                f"scaling asks for {scaling.num_workers} workers x {scaling.gpus_per_worker:g} GPUs = {need_gpu:g} "
                f"GPUs, the Ray cluster has {have_gpu:g}: set scaling.use_gpu=false or lower scaling.num_workers"
            )


def scaling_config(scaling: ScalingSettings) -> Any:
    """Ray Train's ``ScalingConfig`` for the ``scaling`` section (one GPU per worker by default)."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return ScalingConfig(
        num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
    )


# ------------------------------------------------------------------------------------------- running
def _storage_path(cfg: BertopsConfig) -> Path:
    return (cfg.state_dir / "ray_results").resolve()


def _inputs(cfg: BertopsConfig, kind: Kind) -> list[str]:
    layout = DataLayout(Path(cfg.project.data_dir))
    data = layout.pretrain_dir if kind == "pretrain" else layout.finetune_task_dir(cfg.finetune.task)
    return [str(data), str(layout.vocab_file)]


def _install_bundle(checkpoint_dir: Path, target: Path) -> Path:
    """Copy the bundle out of the final checkpoint into ``target``, atomically (temp sibling, then rename)."""
    from bertops.training.loop import BUNDLE_DIR

    source = checkpoint_dir / BUNDLE_DIR
    if not source.is_dir():
        raise RuntimeError(f"the final checkpoint {checkpoint_dir} holds no {BUNDLE_DIR}/ directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{time.time_ns()}"
    shutil.copytree(source, tmp)
    if target.exists():
        old = target.parent / f".{target.name}.old-{time.time_ns()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


REPRODUCE_SRC_ENV = "BERTOPS_REPRODUCE_SRC"  # a worktree's src/ that Ray workers import bertops from
RUN_BUNDLES = "runs"  # <stable path's parent>/runs/<run name>: each run's own bundle
KEEP_RUN_BUNDLES = 5  # newest run bundles kept beside the ones a stable path points at


def point_latest(link: Path, target: Path) -> None:
    """Make ``link`` (a task's stable bundle path) a relative symlink to ``target``, atomically.

    A real directory left there by an older bertops is moved aside first and removed afterwards.
    """
    tmp = link.parent / f".{link.name}.link-{time.time_ns()}"
    tmp.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        old = link.parent / f".{link.name}.old-{time.time_ns()}"
        link.rename(old)
        os.replace(tmp, link)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, link)


def prune_run_bundles(runs: Path, keep: int = KEEP_RUN_BUNDLES) -> list[Path]:
    """Remove all but the ``keep`` newest run bundles in ``runs``, never one that a stable path beside it points at."""
    if not runs.is_dir():
        return []
    linked = {p.resolve() for p in runs.parent.iterdir() if p.is_symlink()}
    bundles = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p for p in bundles[keep:] if p.resolve() not in linked]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def run_training(cfg: BertopsConfig, kind: Kind, run_name: str | None = None) -> TrainResult:
    """Pretrain or fine-tune as configured; see the module docstring. Returns a :class:`TrainResult`."""
    from bertops.training import tracking

    started_at = time.time()
    section = _section(cfg, kind)
    plan = make_plan(cfg, kind)  # checks the data before anything starts
    run_name = run_name or section.run_name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    storage = _storage_path(cfg)
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f"{run_name}.bertops.json"
    previous = json.loads(marker.read_text()) if marker.is_file() else {}

    _connect_ray(cfg, section.scaling)
    check_resources(section.scaling)

    inputs = _inputs(cfg, kind)
    plan.data_version = tracking.data_version(inputs)
    experiment = cfg.tracking.pretrain_experiment if kind == "pretrain" else cfg.tracking.finetune_experiment
    params = cfg.flat() | {
        f"run.{k}": str(v)
        for k, v in {
            "global_batch_size": plan.global_batch_size,
            "total_steps": plan.total_steps,
            "steps_per_epoch": plan.steps_per_epoch,
            "init": plan.init,
            "task": plan.task,
        }.items()
    }
    tags = tracking.lineage_tags(kind, inputs, plan.pretrain_run_id) | {"bertops.run_name": run_name}
    plan.run_id = tracking.open_run(
        cfg.tracking_uri(), experiment, run_name, params, tags, existing_run_id=previous.get("run_id")
    )
    marker.write_text(json.dumps({"run_id": plan.run_id, "kind": kind}))
    log.info(
        "%s run %s (MLflow run %s): %d steps, global batch %d = %d x %d accumulation x %d workers",
        kind, run_name, plan.run_id, plan.total_steps, plan.global_batch_size,
        plan.batch_size, plan.accumulation_steps, plan.num_workers,
    )  # fmt: skip

    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from bertops.training.backend import make_trainer  # imports Ray (not TensorFlow)
    from bertops.training.loop import RESULT_FILE, train_loop_per_worker

    plan.extra["driver_started_at"] = started_at  # wall clock: the worker logs driver_to_first_step_s
    plan.extra["driver_submitted_at"] = time.time()  # and from it driver_setup_s, ray_start_s
    trainer = make_trainer(
        train_loop_per_worker,
        train_loop_config=plan.to_dict(),
        scaling_config=scaling_config(section.scaling),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=section.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=section.checkpoints_to_keep),
            worker_runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}},
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        tracking.close_run(
            cfg.tracking_uri(), plan.run_id, status="FAILED", tags={"bertops.error": str(exc)[:4000]}
        )
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"{kind} run {run_name} finished without a checkpoint")
    # The run's own bundle, which nothing else writes; the task's stable path then points at it.
    latest = Path(section.output_dir if isinstance(section, PretrainConfig) else section.bundle_dir())
    with result.checkpoint.as_directory() as d:
        bundle_dir = _install_bundle(Path(d), latest.parent / RUN_BUNDLES / run_name)
        metrics = json.loads((Path(d) / RESULT_FILE).read_text())
    point_latest(latest, bundle_dir)
    prune_run_bundles(bundle_dir.parent)
    with tempfile.TemporaryDirectory(prefix="bertops-artifacts-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True, default=str))
        artifacts: dict[str, str | Path] = {"config": config_file, "plan": plan_file, "bundle": bundle_dir}
        tracking.close_run(
            cfg.tracking_uri(),
            plan.run_id,
            metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
            artifacts=artifacts,
            tags={
                "bertops.bundle_dir": str(bundle_dir.resolve()),
                # what was trained, read back from the bundle (not the config): the card shows it
                TAG_TRAINED: json.dumps(trained_record(bundle_dir, plan.init), sort_keys=True),
            },
        )
    return TrainResult(
        kind=kind,
        run_id=plan.run_id,
        run_name=run_name,
        bundle_dir=str(bundle_dir.resolve()),
        metrics=metrics,
        checkpoint_path=result.checkpoint.path,
        pretrain_run_id=plan.pretrain_run_id,
    )


def pretrain(cfg: BertopsConfig, run_name: str | None = None) -> TrainResult:
    """MLM + NSP pretraining on ``data/pretrain``; writes the pretraining bundle to ``pretrain.output_dir``."""
    return run_training(cfg, "pretrain", run_name)


def finetune(cfg: BertopsConfig, run_name: str | None = None) -> TrainResult:
    """Fine-tune ``finetune.task`` from ``finetune.init``; writes the task bundle to ``finetune.output_dir``."""
    return run_training(cfg, "finetune", run_name)
