"""The ``bert_retrain`` steps as they see Airflow: read the run's params and upstream XComs, call the library.

Every function takes the task ``context`` (or XCom ids) and returns small ids for XCom. Airflow is imported
inside functions only (its exceptions), so that this module imports fast for DAG parsing.

prepare data -> pretrain (when needed) -> fine-tune -> evaluate -> register -> promotion gate ->
update serving -> summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bertops.config import ConfigError
from bertops.monitoring.feedback_source import FeedbackSourceError, export_for_retrain
from bertops.orchestration import dvc_ops, tasks
from bertops.orchestration.ray_jobs import JobOutcome, JobSpec, RayJobError, submission_id_for
from bertops.orchestration.retrain_params import RetrainParamsError

log = logging.getLogger(__name__)

DAG_ID = "bert_retrain"
DATA_DAG_ID = "bert_data"
DATA_ASSET = "bertops_data"
DRIFT_ASSET = "bertops_drift"  # emitted by bert_monitor (bertops.monitoring) when the served data drifted
MONITOR_DAG_ID = "bert_monitor"


def _fail(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _skip(message: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(message)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Refuse bad params without retrying: a schema error or a bad config key fails the run at once."""
    try:
        return tasks.check_params(params)
    except (RetrainParamsError, ConfigError, tasks.RetrainRefused) as exc:
        _fail(str(exc))
        raise  # unreachable: _fail raises


# ------------------------------------------------------------------------------------------- data
def prepare_data(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """This run's data (a DVC experiment when it overrides data params), set aside for this run alone; first
    the served texts with feedback labels, exported from the monitoring store as a source of ``ingest``."""
    try:
        feedback = export_for_retrain(tasks.run_config(params), tasks.project_root())
        return {**tasks.prepare_run_data(params, run_id), "feedback_texts": feedback}
    except (FeedbackSourceError, dvc_ops.StageInputError, dvc_ops.OverrideNotApplied, ConfigError) as exc:
        # The same data or config fails the same way: fail once, with the reason first, instead of three tries.
        _fail(str(exc))
        raise  # unreachable: _fail raises


def drift_trigger(context: Any) -> dict[str, str]:
    """The drift report of the ``bertops_drift`` event that triggered this run (bert_monitor puts its paths in
    the event's extra), for the lineage tags; empty when the run had no such trigger."""
    events = context.get("triggering_asset_events") or {}
    for asset in events:
        if getattr(asset, "name", None) == DRIFT_ASSET and events[asset]:
            extra = dict(events[asset][-1].extra or {})
            return {k: str(extra[f]) for k, f in (("drift_report", "json_path"), ("drift_run_id", "mlflow_run_id"))
                    if extra.get(f)}  # fmt: skip
    return {}


def with_run_data(params: dict[str, Any], prepared: dict[str, Any]) -> dict[str, Any]:
    """The run's params, pointed at the run's own data (``project.data_dir``) when prepare_data set one."""
    if not prepared.get("data_dir"):
        return dict(params)
    out = dict(params)
    out["overrides"] = [*(params.get("overrides") or []), f"project.data_dir={prepared['data_dir']}"]
    return out


def run_params(context: Any) -> dict[str, Any]:
    """``with_run_data`` of a task's context: every task after prepare_data reads the run's own data."""
    return with_run_data(dict(context["params"]), _prepared(context))


# ------------------------------------------------------------------------------------------- Ray jobs
def _prepared(context: Any) -> dict[str, Any]:
    return dict(context["ti"].xcom_pull(task_ids="prepare_data") or {})


def _lineage_env(context: Any) -> dict[str, str]:
    return tasks.lineage_env(_prepared(context), tasks.run_overrides(dict(context["params"])))


def _run_name(context: Any) -> str:
    ti = context["ti"]
    return submission_id_for(ti.dag_id, context["run_id"], ti.task_id)


def build_pretrain(context: Any) -> tuple[str, JobSpec, float]:
    """The pretraining job, or a skip when the corpus did not change (or the run said skip)."""
    params = run_params(context)
    cfg = tasks.run_config(params)
    needed, why = tasks.pretrain_decision(
        cfg, params.get("pretraining", "auto"), _prepared(context).get("corpus_version")
    )
    if not needed:
        _skip(f"pretraining not needed: {why}")
    log.info("pretraining: %s", why)
    spec = tasks.training_job(
        "pretrain",
        cfg,
        tasks.run_overrides(params),
        context["run_id"],
        extra_env=_lineage_env(context),
        run_name=_run_name(context),
    )
    return tasks.ray_dashboard_url(cfg), spec, float(cfg.orchestration.ray_job_timeout_s)


def after_pretrain(outcome: JobOutcome, context: Any) -> dict[str, Any]:
    result = tasks.require_result("pretrain", outcome.result, outcome.submission_id)
    cfg = tasks.run_config(dict(context["params"]))
    tasks.record_pretraining(cfg, result, _prepared(context).get("corpus_version"))
    return {
        "run_id": result["run_id"],
        "bundle_dir": result["bundle_dir"],
        "ray_job_id": outcome.submission_id,
    }


def build_finetune(context: Any) -> tuple[str, JobSpec, float]:
    params = run_params(context)
    cfg = tasks.run_config(params)
    pre = context["ti"].xcom_pull(task_ids="pretrain") or {}
    env = _lineage_env(context)
    if pre.get("run_id"):
        env["BERTOPS_PRETRAIN_RUN_ID"] = pre["run_id"]
    spec = tasks.training_job(
        "finetune",
        cfg,
        tasks.run_overrides(params),
        context["run_id"],
        extra_env=env,
        run_name=_run_name(context),
    )
    return tasks.ray_dashboard_url(cfg), spec, float(cfg.orchestration.ray_job_timeout_s)


def after_finetune(outcome: JobOutcome, context: Any) -> dict[str, Any]:
    result = tasks.require_result("finetune", outcome.result, outcome.submission_id)
    out = {
        "run_id": result["run_id"],
        "bundle_dir": result["bundle_dir"],
        "ray_job_id": outcome.submission_id,
    }
    if result.get("model_uri"):
        out["model_uri"] = result["model_uri"]
    return out


# ------------------------------------------------------------------------------------------- registry
def evaluate(params: dict[str, Any], trained: dict[str, Any], airflow_run_id: str) -> dict[str, Any]:
    """Evaluate the fine-tuned bundle on its task's held-out test split (one MLflow evaluation run: the gate
    reads it, nothing evaluates the candidate again)."""
    from bertops.evaluation.evaluate import default_output_dir, model_task
    from bertops.evaluation.evaluate import evaluate as run_evaluation
    from bertops.paths import DataLayout

    cfg = tasks.run_config(params)
    root = tasks.project_root()
    task = model_task(trained["bundle_dir"])
    from bertops.evaluation.errors import EvaluationError

    test_file = root / DataLayout(root=Path(cfg.project.data_dir)).split_file(task, "test")
    try:
        result = run_evaluation(
            trained["bundle_dir"],
            test_file,
            cfg.evaluation,
            output_dir=root / default_output_dir(cfg.evaluation.output_dir, task),
            tracking_uri=cfg.tracking_uri(),
            experiment=cfg.tracking.evaluation_experiment,
            run_name=f"evaluate-{airflow_run_id}"[:200],
            tags={"bertops.training_run_id": trained["run_id"], "bertops.airflow_run_id": airflow_run_id},
        )
    except EvaluationError as exc:  # test data that does not fit the model: the same on every try
        _fail(str(exc))
        raise  # unreachable: _fail raises
    return {
        "evaluation_run_id": result.run_id,
        "task": task,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
    }


def _model_uri(cfg: Any, trained: dict[str, Any]) -> str:
    """The logged MLflow model of the fine-tuning run; logged here from the bundle (its task's pyfunc) when
    training did not."""
    if trained.get("model_uri"):
        return str(trained["model_uri"])
    import mlflow

    from bertops.model.pyfunc import log_bundle
    from bertops.registry.client import connect

    client = connect(cfg.tracking_uri())
    # The fluent API refuses a run of another experiment than the active one, and an earlier task in the same
    # process (`dag.test()`, a worker that runs several tasks) may have made the evaluation experiment active.
    experiment_id = client.get_run(trained["run_id"]).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_id=trained["run_id"]):
        info = log_bundle(trained["bundle_dir"], name="model")
    return str(getattr(info, "model_uri", None) or f"runs:/{trained['run_id']}/model")


def register(
    params: dict[str, Any],
    trained: dict[str, Any],
    prepared: dict[str, Any],
    airflow_run_id: str,
    evaluated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the candidate as a new version (alias ``challenger``) with its lineage tags; pass on the
    ``evaluate`` step's run and the data version for the gate."""
    from bertops.model.bundle import read_labels
    from bertops.registry.registry import register_candidate

    cfg = tasks.run_config(params)
    ref = register_candidate(
        _model_uri(cfg, trained),
        tracking_uri=cfg.tracking_uri(),
        model_name=model_name(cfg),
        training_run_id=trained["run_id"],
        data_version=prepared.get("data_version"),
        ray_job_id=trained.get("ray_job_id"),
        airflow_run_id=airflow_run_id,
        lineage=tasks.registry_lineage(prepared, tasks.run_overrides(params)),
        labels=read_labels(trained["bundle_dir"]),
    )
    return {
        "name": ref["name"],
        "version": str(ref["version"]),
        "evaluation_run_id": (evaluated or {}).get("evaluation_run_id"),
        "data_version": prepared.get("data_version"),
    }


def model_name(cfg: Any) -> str:
    return str(cfg.model_name_for(cfg.finetune.task))


def promotion_gate(params: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
    """Gate the candidate against the champion, then promote by the run's mode (auto / require_approval / never).

    ``require_approval`` waits here (up to ``promotion.approval_timeout_s``) for a reviewer's ``approval`` tag.
    """
    from bertops.paths import DataLayout
    from bertops.registry.promote import promote, run_gate

    cfg = tasks.run_config(params)
    root = tasks.project_root()
    name, version = registered["name"], registered["version"]
    test_file = root / DataLayout(root=Path(cfg.project.data_dir)).split_file(cfg.finetune.task, "test")
    decision = run_gate(
        cfg,
        name,
        version,
        test_file,
        evaluation_run_id=registered.get("evaluation_run_id"),
        data_version=registered.get("data_version"),
    )
    out = {"name": name, "version": version, "gate": decision.status, "reason": decision.reason,
           "champion_before": decision.champion_version, "promoted": False}  # fmt: skip
    mode = cfg.promotion.mode
    if not decision.passed:
        out["decision"] = "rejected by the gate"
    elif mode == "never":
        out["decision"] = "gate passed; not promoted (promotion mode 'never')"
    else:
        # Live traffic first (promotion.shadow / promotion.canary): a refusal leaves the alias where it is.
        live = (
            tasks.live_trial(cfg, name, version, wait_for_review=(mode == "require_approval"))
            if tasks.live_trial_enabled(cfg)
            else None
        )
        if live is not None:
            out["live"] = live
        if live is not None and not live["passed"]:
            out["decision"] = f"refused on live traffic: {live['reason']}"
        else:
            try:
                result = promote(cfg, name, version, wait_for_review=(mode == "require_approval"))
            except Exception:
                if live is not None:  # the candidate must not keep its canary share
                    tasks.drop_candidate(cfg, name)
                raise
            out["promoted"] = bool(result.get("changed", True))
            out["decision"] = f"promoted to champion (mode {mode})"
    log.info("%s v%s: %s (%s)", name, version, out["decision"], decision.reason)
    return out


def update_serving(params: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """Tell the running service to follow ``champion`` now (it also polls); skipped when nothing was promoted."""
    from bertops.serving.client import ServingClientError, notify_reload

    if not gate.get("promoted"):
        _skip(f"nothing promoted ({gate.get('decision')}); serving keeps its model")
    cfg = tasks.run_config(params)
    url = tasks.serving_url(cfg)
    try:
        answer = notify_reload(url, timeout=300, model=gate.get("name"))
    except ServingClientError as exc:
        if (
            exc.status is None
        ):  # nobody listening: no service to update (it loads the champion when it starts)
            log.warning(
                "no serving application answers at %s (%s); it will load the champion on start", url, exc
            )
            return {"serving_url": url, "version": None}
        if (
            exc.status == 404
        ):  # a service that serves other models: the promotion stands, the service is as it was
            note = (
                f"the service at {url} does not serve {gate.get('name')!r}; to serve it, add it to "
                "serving.models (or make it registry.model_name) and restart the service"
            )
            log.warning("%s (%s)", note, exc)
            return {"serving_url": url, "version": None, "note": note}
        raise
    return {"serving_url": url, "version": answer.get("version")}


def _mlflow_run_url(ui: str, tracking: str, run_id: str) -> str | None:
    """The run's page: its own experiment's id (looked up), not experiment 0."""
    from mlflow.exceptions import MlflowException

    from bertops.registry.client import connect

    try:
        experiment_id = connect(tracking).get_run(run_id).info.experiment_id
    except MlflowException as exc:
        log.warning("no MLflow run %s at %s (%s)", run_id, tracking, exc)
        return None
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def summary(
    params: dict[str, Any], run_id: str, xcoms: dict[str, Any], failed: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What ran, on which data, the metrics, the decision, and links to the MLflow run and model version.

    After a failure (``failed``: :func:`bertops.orchestration.failures.run_failures`) the summary says which
    task failed, its try, the first error line and its log, and then fails the task (so the run is failed)."""
    cfg = tasks.run_config(params)
    tracking = cfg.tracking_uri()
    ui = tracking.rstrip("/") if tracking.startswith("http") else None
    trained = xcoms.get("finetune") or {}
    gate = xcoms.get("promotion_gate") or {}
    evaluation = xcoms.get("evaluate") or {}
    prepared = xcoms.get("prepare_data") or {}
    out: dict[str, Any] = {
        "airflow_run_id": run_id,
        "overrides": (xcoms.get("check_params") or {}).get("overrides", []),
        "data_version": prepared.get("data_version"),
        "dvc_experiment": prepared.get("dvc_experiment"),
        "dvc_rev": prepared.get("dvc_rev"),
        "pretrained": bool(xcoms.get("pretrain")),
        "training_run_id": trained.get("run_id"),
        "metrics": evaluation.get("metrics", {}),
        "model": gate.get("name"),
        "version": gate.get("version"),
        "gate": gate.get("gate"),
        "decision": gate.get("decision"),
        "serving_version": (xcoms.get("update_serving") or {}).get("version"),
    }
    if gate.get("live"):  # the shadow and canary outcome (the shadow report is on the model version too)
        out["live_trial"] = {k: gate["live"].get(k) for k in ("passed", "reason", "shadow_run_id", "canary")}
    if (xcoms.get("update_serving") or {}).get("note"):
        out["serving_note"] = xcoms["update_serving"]["note"]
    if ui and trained.get("run_id"):
        url = _mlflow_run_url(ui, tracking, trained["run_id"])
        if url:
            out["mlflow_run_url"] = url
    if ui and gate.get("version"):
        out["model_version_url"] = f"{ui}/#/models/{gate['name']}/versions/{gate['version']}"
    if failed:
        out["failed"] = failed
    for key, value in out.items():
        log.info("summary %-18s %s", key, value)
    if failed:
        from bertops.orchestration.failures import describe

        for failure in failed:
            log.error("%s; full log: %s", describe(failure), failure.get("log_path"))
        _fail(f"the retrain failed: {describe(failed[0])}")
    return out


__all__ = [
    "DAG_ID",
    "DATA_ASSET",
    "DATA_DAG_ID",
    "DRIFT_ASSET",
    "MONITOR_DAG_ID",
    "RayJobError",
    "after_finetune",
    "after_pretrain",
    "build_finetune",
    "build_pretrain",
    "check_params",
    "evaluate",
    "prepare_data",
    "run_params",
    "with_run_data",
]
