"""``train_loop_per_worker``: the distributed training loop every Ray Train worker runs.

Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), so the loop is written
out: the model and optimizer are built under ``strategy.scope()``; each step runs ``strategy.run`` of a
replica step that accumulates gradients over ``accumulation_steps`` micro-batches (each loss averaged over
the *global* batch with ``tf.nn.compute_average_loss``), all-reduces them across workers, then clips the
global gradient by norm and applies it once. The backend (``bertops.training.backend``) sets ``TF_CONFIG`` for
the strategy; this module only ever uses Keras 3 (``import keras``), never ``tf.keras``.

Input is cut per global batch to a fixed set of lengths (``sequence_buckets``, ``bertops.training.datasets``):
every worker runs the same step shapes in the same order, and XLA compiles one program per bucket.

Per step: ``loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_s`` (real tokens, padding not counted),
``padding_share`` (share of the computed positions that were padding), ``model_flops_per_s``,
``examples_per_s``, ``step_time_s``, ``seq_len`` and ``batch_fingerprint`` of the last step (which data it
trained on), and ``mfu`` on a known GPU, go to MLflow from rank 0. Evaluation runs every ``eval_every_steps`` (and at
each epoch end when fine-tuning) on every worker over the same split, so all workers agree on early stopping.
Checkpoints (model, optimizer, loop state incl. data position) go through ``ray.train.report``; a restarted
worker group resumes from the latest one at the same step. The last report carries the final model bundle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bertops.training.backend import wait_for_tensorflow
from bertops.training.plan import RunPlan

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"  # inside the final checkpoint
RESULT_FILE = "result.json"  # inside the final checkpoint: final metrics


def _label_counts(files: list[str], manifest: dict[str, Any], num_classes: int, key: str) -> list[int]:
    """Label frequencies of a split (``-100`` ignored), for balanced class weights."""
    import numpy as np
    import tensorflow as tf

    from bertops.data.records import parse_fn

    counts = np.zeros(num_classes, dtype=np.int64)
    ds = tf.data.TFRecordDataset(files).batch(1024).map(parse_fn(manifest, batched=True))
    for batch in ds:
        labels = batch[key].numpy().ravel()
        labels = labels[labels >= 0]
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    return counts.tolist()


def build_model(plan: RunPlan) -> Any:
    """The task model of the plan, initialised as ``plan.init`` says (call under the strategy's scope)."""
    import keras

    from bertops.config import ModelConfig
    from bertops.model.heads import BertClassifier, BertPretrainer, BertTokenClassifier
    from bertops.model.presets import backbone_from_config

    if plan.init == "scratch":
        backbone = backbone_from_config(ModelConfig(**plan.model), plan.vocab_size)
    elif plan.init.startswith("bundle:"):
        from bertops.model.bundle import MODEL_FILE

        loaded = keras.saving.load_model(Path(plan.init.removeprefix("bundle:")) / MODEL_FILE, compile=False)
        backbone = getattr(loaded, "backbone", loaded)
        if plan.task == "pretraining" and isinstance(loaded, BertPretrainer):
            return loaded
    else:
        from bertops.model.checkpoints import import_checkpoint

        imported = import_checkpoint(
            plan.init, heads=plan.task == "pretraining", dtype=plan.model["dtype_policy"]
        )
        if plan.task == "pretraining" and imported.pretrainer is not None:
            return imported.pretrainer
        backbone = imported.backbone
    vocab = backbone.token_embedding.input_dim
    if vocab < plan.vocab_size:
        raise ValueError(
            f"the initial model ({plan.init}) has a vocabulary of {vocab} tokens but the training records use "
            f"ids up to {plan.vocab_size}: build the records with that model's vocab.txt (vocab.vocab_file)"
        )
    if plan.task == "pretraining":
        return BertPretrainer(backbone)
    assert plan.labels is not None
    head = BertClassifier if plan.task == "classification" else BertTokenClassifier
    return head(backbone, num_classes=len(plan.labels), dropout=plan.model.get("dropout", 0.1))


def build_task(plan: RunPlan, model: Any, train_files: list[str], manifest: dict[str, Any]) -> Any:
    from bertops.training.tasks import ClassificationTask, NerTask, PretrainingTask, balanced_class_weights

    if plan.task == "pretraining":
        return PretrainingTask(model=model)
    assert plan.labels is not None
    weights = None
    if plan.class_weights == "balanced":
        key = "label" if plan.task == "classification" else "labels"
        counts = _label_counts(train_files, manifest, len(plan.labels), key)
        weights = balanced_class_weights(counts)
        log.info("balanced class weights %s from label counts %s", weights, counts)
    if plan.task == "classification":
        return ClassificationTask(model=model, class_weights=weights, num_classes=len(plan.labels))
    outside = plan.labels.index("O") if "O" in plan.labels else 0
    return NerTask(model=model, class_weights=weights, outside_index=outside)


def _gpu_peak(plan: RunPlan) -> float | None:
    import tensorflow as tf

    from bertops.training.flops import peak_flops

    if plan.peak_tflops:
        return plan.peak_tflops * 1e12
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
    return peak_flops(name, plan.model.get("dtype_policy", "float32"))


def _ray_start_parts(extra: dict[str, Any]) -> dict[str, float]:
    """``ray_start_s`` split at the worker process's creation and the backend's first call on it: the
    controller and the worker's process (``ray_worker_process_s``), the actor's start until Ray Train's backend
    reached it (``ray_worker_init_s``), and the backend's set-up until this loop began (``ray_backend_s``)."""
    import psutil

    from bertops.training import backend

    # A worker taken from Ray's idle pool predates the submission: its process part is then zero.
    spawned = max(psutil.Process().create_time(), extra["driver_submitted_at"])
    parts = {
        "ray_worker_process_s": spawned - extra["driver_submitted_at"],
        "ray_worker_init_s": (backend.backend_started_at or extra["loop_started_at"]) - spawned,
    }
    if backend.backend_started_at is not None:
        parts["ray_backend_s"] = extra["loop_started_at"] - backend.backend_started_at
    return parts


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``make_trainer(train_loop_per_worker, train_loop_config=plan.to_dict(), ...)``)."""
    started = time.perf_counter()
    config = {**config, "extra": {**config.get("extra", {}), "loop_started_at": time.time()}}
    loggers: list[Any] = []  # the rank-0 MetricLogger, closed (its queue sent) however the loop ends
    try:
        _train(config, started, loggers)
    finally:
        for logger in loggers:
            logger.close()


def _train(config: dict[str, Any], started: float, loggers: list[Any]) -> None:
    wait_for_tensorflow()  # the import the backend started while Ray Train set up (no concurrent imports)
    import keras
    import numpy as np
    import ray.train
    import tensorflow as tf

    from bertops.config import OptimizerConfig
    from bertops.data.records import load_manifest, split_files
    from bertops.training.checkpointing import (
        LoopState,
        load_checkpoint,
        save_checkpoint,
        temp_checkpoint_dir,
    )
    from bertops.training.datasets import batch_fingerprint, eval_dataset, train_dataset
    from bertops.training.flops import mfu, train_flops_per_token
    from bertops.training.optimization import (
        apply_loss_scaled,
        build_optimizer,
        learning_rate_at,
        warmup_steps_for,
    )
    from bertops.training.precision import resolve_dtype_policy
    from bertops.training.tracking import MetricLogger

    # Ray sets OMP_NUM_THREADS to the worker's CPUs; hold TensorFlow's op pool to it as well, so that workers
    # sharing a node do not oversubscribe its cores (must happen before TensorFlow's context starts).
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))

    plan = RunPlan.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world != plan.num_workers:
        raise RuntimeError(f"plan expects {plan.num_workers} workers, Ray started {world}")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"
    )
    keras.utils.set_random_seed(plan.seed)
    if plan.deterministic:  # every op's deterministic kernel (or an error naming an op that has none)
        tf.config.experimental.enable_op_determinism()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = resolve_dtype_policy(plan.model.get("dtype_policy", "float32"), on_gpu=on_gpu)
    plan.model["dtype_policy"] = policy  # what the model is built, imported and its FLOPs peak looked up with
    if policy != "float32":
        keras.config.set_dtype_policy(policy)
    loss_scaling = policy == "mixed_float16"

    manifest = load_manifest(plan.manifest)
    train_files = split_files(plan.manifest, plan.train_split)
    eval_files = split_files(plan.manifest, plan.eval_split)

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    opt_cfg = OptimizerConfig(**plan.optimizer)
    with strategy.scope():
        model = build_model(plan)
        task = build_task(plan, model, train_files, manifest)
        optimizer = build_optimizer(opt_cfg, plan.total_steps, model, loss_scaling=loss_scaling)
    # Only variables with a path to the loss: e.g. the pooler is unused by the token classifier (NER), and
    # ``tape.gradient`` would give None for it. Every other variable must get a gradient (checked below).
    variables = task.trained_variables()
    skipped = [v.path for v in task.unused_variables()]
    if skipped:
        log.info("not trained (no path to the %s loss): %s", plan.task, ", ".join(skipped))
    warmup = warmup_steps_for(opt_cfg, plan.total_steps)

    state = LoopState()
    best_weights: list[np.ndarray] | None = None
    resumed_from: int | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d, model, optimizer)
            best_path = Path(d) / "best_weights.npz"
            if best_path.is_file():
                with np.load(best_path) as data:
                    best_weights = [data[f"arr_{i}"] for i in range(len(data.files))]
        resumed_from = state.step
        log.info("resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch)

    micro, accum = plan.batch_size, plan.accumulation_steps

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return train_dataset(
            train_files,
            manifest,
            batch_size=micro * accum,
            num_shards=input_context.num_input_pipelines,
            shard_index=input_context.input_pipeline_id,
            seed=plan.seed,
            skip_batches=state.step,  # the data position: one global batch per optimizer step
            sequence_buckets=plan.sequence_buckets,
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    def micro_grads(batch: dict[str, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            outputs = model(task.inputs(batch), training=True)
            loss = tf.nn.compute_average_loss(
                task.per_example_loss(batch, outputs), global_batch_size=plan.global_batch_size
            )
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, variables)
        missing = [v.path for v, g in zip(variables, grads, strict=True) if g is None]
        if missing:  # known at trace time: a model/task mismatch, not something to train around
            raise ValueError(
                f"no gradient for {', '.join(missing)}: these variables have no path to the {plan.task} loss; "
                "list them in the task's unused_variables() if that is intended"
            )
        # Embedding gradients arrive as IndexedSlices: densify so they can be summed and all-reduced.
        return [tf.convert_to_tensor(g) for g in grads], loss

    if plan.jit_compile:
        micro_grads = tf.function(micro_grads, jit_compile=True)

    def replica_step(batch: dict[str, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        grads, loss = None, tf.constant(0.0)
        for i in range(accum):  # unrolled: accumulation counts are small
            part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
            g, l_i = micro_grads(part)
            grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            loss += l_i
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        # One vector, one cross-worker sum: loss, real tokens, computed positions, the batch's fingerprint
        # (float64 holds the integer counts exactly).
        stats = tf.stack(
            [
                tf.cast(loss, tf.float64),
                tf.cast(task.tokens_in(batch), tf.float64),
                tf.cast(tf.size(batch["padding_mask"]), tf.float64),
                tf.cast(batch_fingerprint(batch), tf.float64),
            ]
        )
        return grads, stats, tf.shape(batch["token_ids"])[1]

    @tf.function
    def train_step(it: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        grads, stats, width = strategy.run(replica_step, args=(next(it),))
        # After the all-reduce every replica holds the same sum: take the local copy and update in the
        # cross-replica context, so that clipping sees the global gradient and nothing is reduced twice.
        grads = [strategy.experimental_local_results(g)[0] for g in grads]
        if loss_scaling:
            norm = apply_loss_scaled(optimizer, grads, variables, opt_cfg.clip_norm)
        else:
            grads, norm = tf.clip_by_global_norm(grads, opt_cfg.clip_norm)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
        width = strategy.experimental_local_results(width)[0]  # the same on every worker (one bucket a step)
        return strategy.reduce("SUM", stats, axis=None), norm, width

    @tf.function
    def eval_step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return task.eval_sums(batch, model(task.inputs(batch), training=False))

    eval_time = 0.0  # this attempt's time in evaluations (reported apart from the framework's overhead)

    def evaluate(files: list[str], max_batches: int | None) -> dict[str, float]:
        nonlocal eval_time
        t = time.perf_counter()
        sums: dict[str, float] = {}
        batches = eval_dataset(
            files, manifest, batch_size=micro * accum, max_batches=max_batches,
            sequence_buckets=plan.sequence_buckets,
        )  # fmt: skip
        for batch in batches:
            for k, v in eval_step(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        eval_time += time.perf_counter() - t
        return task.finalize(sums)

    arch = model.backbone.get_config()
    num_params = int(sum(np.prod(v.shape) for v in variables))

    def flops_per_token(width: int) -> float:  # attention grows with the step's (bucketed) length
        return train_flops_per_token(num_params, arch["num_layers"], arch["hidden_dim"], width)

    peak = _gpu_peak(plan)
    devices = max(1, len(tf.config.list_physical_devices("GPU"))) * world
    logger = MetricLogger(plan.tracking_uri, plan.run_id, plan.total_steps) if rank == 0 else None
    loggers.extend([logger] if logger else [])

    def report(metrics: dict[str, Any], with_checkpoint: bool, bundle: bool = False) -> None:
        """All workers call this (it is a barrier); rank 0 attaches the checkpoint."""
        ckpt_dir = None
        if rank == 0 and with_checkpoint:
            ckpt_dir = temp_checkpoint_dir()
            save_checkpoint(ckpt_dir, model, optimizer, state)
            if best_weights is not None:
                np.savez(ckpt_dir / "best_weights.npz", *best_weights)
            if bundle:
                _write_bundle(plan, model, ckpt_dir / BUNDLE_DIR, metrics)
                (ckpt_dir / RESULT_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        # Ray copies the directory to the run's storage, then deletes the local copy.
        ray.train.report(
            {**metrics, "step": state.step, "epoch": state.epoch},
            checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None,
            delete_local_checkpoint_after_upload=ckpt_dir is not None,
        )

    first_step_logged = False
    window = {"steps": 0, "tokens": 0.0, "positions": 0.0, "flops": 0.0, "time": 0.0}
    attempt_train_time = 0.0
    loop_started = time.perf_counter()
    last_metrics: dict[str, Any] = {}
    while state.step < plan.total_steps and not state.stopped_early:
        t0 = time.perf_counter()
        stats_t, norm_t, width_t = train_step(iterator)
        loss, tokens, positions, fingerprint = (float(x) for x in stats_t.numpy())  # waits for the step
        norm, width = float(norm_t), int(width_t)
        dt = time.perf_counter() - t0
        state.step += 1
        attempt_train_time += dt
        state.train_time_s += dt
        if not first_step_logged:
            first_step_logged = True
            # The first step includes tracing (and XLA compilation): logged apart, left out of throughput.
            if logger:
                first = {"time_to_first_step_s": time.perf_counter() - started, "first_step_s": dt}
                extra = plan.extra
                if "driver_started_at" in extra:  # the whole start-up: plan, Ray, workers, imports
                    first["driver_to_first_step_s"] = time.time() - extra["driver_started_at"]
                if "driver_submitted_at" in extra:  # its parts before this loop started
                    first["driver_setup_s"] = extra["driver_submitted_at"] - extra["driver_started_at"]
                    first["ray_start_s"] = extra["loop_started_at"] - extra["driver_submitted_at"]
                    first.update(_ray_start_parts(extra))
                logger.set_tags({"bertops.dtype_policy": policy})
                if resumed_from is not None:
                    first["resumed_from_step"] = resumed_from
                logger.log(first, state.step)
        else:
            window["steps"] += 1
            window["tokens"] += tokens
            window["positions"] += positions
            window["flops"] += tokens * flops_per_token(width)
            window["time"] += dt
        if not np.isfinite(loss) and not loss_scaling:
            raise FloatingPointError(f"loss is {loss} at step {state.step}; lower the learning rate")
        done = state.step >= plan.total_steps
        if state.step % plan.log_every_steps == 0 or done:
            metrics: dict[str, Any] = {
                "loss": loss,
                "grad_norm": norm,
                "learning_rate": learning_rate_at(
                    state.step - 1, opt_cfg.learning_rate, warmup, plan.total_steps
                ),
                "seq_len": width,
                "batch_fingerprint": fingerprint,
            }
            if window["time"] > 0:
                flops_per_s = window["flops"] / window["time"]
                metrics.update(
                    tokens_per_s=window["tokens"] / window["time"],
                    padding_share=1.0 - window["tokens"] / window["positions"],
                    model_flops_per_s=flops_per_s,
                    examples_per_s=window["steps"] * plan.global_batch_size / window["time"],
                    step_time_s=window["time"] / window["steps"],
                )
                if peak:
                    metrics["mfu"] = mfu(flops_per_s, devices, peak)
            metrics["train_share_of_wall"] = attempt_train_time / max(time.perf_counter() - started, 1e-9)
            window = {"steps": 0, "tokens": 0.0, "positions": 0.0, "flops": 0.0, "time": 0.0}
            last_metrics.update(metrics)
            if logger:
                logger.log(metrics, state.step)
        epoch_end = bool(plan.steps_per_epoch) and state.step % plan.steps_per_epoch == 0
        eval_due = epoch_end or state.step % plan.eval_every_steps == 0 or done
        if eval_due:
            if epoch_end:
                state.epoch += 1
            results = evaluate(eval_files, plan.eval_batches)
            state.last_eval, state.last_eval_step = results, state.step
            value = results[task.monitor]
            better = state.best_metric is None or (
                value > state.best_metric if task.monitor_mode == "max" else value < state.best_metric
            )
            if better:
                state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
                if plan.early_stopping_patience is not None:
                    best_weights = [np.array(w) for w in model.get_weights()]
            else:
                state.bad_evals += 1
                if (
                    plan.early_stopping_patience is not None
                    and state.bad_evals > plan.early_stopping_patience
                ):
                    state.stopped_early = True
                    log.info("early stopping at step %d: no better %s for %d evaluations",
                             state.step, task.monitor, state.bad_evals)  # fmt: skip
            if logger:
                logger.log({f"{plan.eval_split}_{k}": v for k, v in results.items()} | {"epoch": state.epoch},
                           state.step)  # fmt: skip
        if state.step % plan.checkpoint_every_steps == 0 and not (done or state.stopped_early):
            report({"loss": loss, **{f"{plan.eval_split}_{k}": v for k, v in state.last_eval.items()}}, True)

    # -- finish: best weights back, final metrics, the bundle in the last checkpoint
    restored = best_weights is not None and state.best_step != state.step
    if restored:
        model.set_weights(best_weights)
    if restored or state.last_eval_step != state.step or not state.last_eval:
        state.last_eval = evaluate(eval_files, plan.eval_batches)
    # else: the weights are the ones just evaluated at this step (every run ends with an evaluation)
    final = {f"{plan.eval_split}_{k}": v for k, v in state.last_eval.items()}
    if plan.test_split:
        test_files = split_files(plan.manifest, plan.test_split)
        final.update({f"{plan.test_split}_{k}": v for k, v in evaluate(test_files, None).items()})
    wall = time.perf_counter() - loop_started
    final.update(
        steps=state.step,
        best_step=state.best_step or state.step,
        stopped_early=float(state.stopped_early),
        train_time_s=state.train_time_s,
        eval_time_s=eval_time,
        loop_wall_s=wall,
        overhead_share=1.0 - attempt_train_time / max(time.perf_counter() - started, 1e-9),
        global_batch_size=plan.global_batch_size,
        **{
            k: last_metrics[k]
            for k in ("tokens_per_s", "padding_share", "model_flops_per_s", "examples_per_s", "mfu")
            if k in last_metrics
        },
    )
    if logger:
        logger.log(final, state.step)
        logger.close()  # every metric in the run before the driver closes it
    report(final, with_checkpoint=True, bundle=True)


def _write_bundle(plan: RunPlan, model: Any, path: Path, metrics: dict[str, Any]) -> None:
    from bertops.model.bundle import save_bundle

    save_bundle(
        path,
        model,
        vocab_file=plan.vocab_file,
        task=plan.task,
        max_seq_length=plan.max_seq_length,
        labels=plan.labels,
        lowercase=plan.lowercase,
        strip_accents=plan.strip_accents,
        data_version=plan.data_version,
        source_run_id=plan.run_id,
        tokenizer=plan.tokenizer or None,
        extra={
            "kind": plan.kind,
            "init": plan.init,
            "pretrain_run_id": plan.pretrain_run_id,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            "global_batch_size": plan.global_batch_size,
            "ray_job_id": os.environ.get("RAY_JOB_ID"),
        },
    )
