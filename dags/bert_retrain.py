"""
### bert_retrain: data -> pretraining -> fine-tuning -> evaluation -> registry -> gate -> serving

Runs weekly (`orchestration.retrain_schedule`), whenever `bert_data` publishes a new data version (the
`bertops_data` Asset) or `bert_monitor` sees drift (the `bertops_drift` Asset), and by hand
(`bertops retrain --set finetune.epochs=3`, or *Trigger* in the UI) with Params validated by one JSON schema
(`bertops.orchestration.retrain_params`).

| task | what |
|---|---|
| `check_params` | refuse bad params (schema, then every config key) before any work |
| `prepare_data` | the feedback-labelled served texts exported from the monitoring store (a source of `ingest`), then `dvc repro`, or a DVC experiment (`dvc exp run --set-param`) for data overrides; the run's data set aside for it (pool `dvc`) |
| `pretrain` | Ray job `ray_jobs/pretrain.py`, only when the corpus changed or asked (`pretraining`) |
| `finetune` | Ray job `ray_jobs/finetune.py` |
| `evaluate` | MLflow evaluation run on the held-out test split |
| `register` | new registered model version, alias `challenger`, lineage tags |
| `promotion_gate` | gate against the champion; then, with `promotion.shadow` / `promotion.canary` enabled, the candidate on the running service's live traffic (shadow report on the version, canary steps, rollback on limits); promote per `promotion`: auto / require_approval / never |
| `update_serving` | tell Ray Serve to follow `champion` now |
| `summary` | what ran, metrics, the decision, MLflow links; after a failure, which task failed, its try, the first error line and its log (then it fails the run) |

Ray jobs go through the Ray Jobs API with a submission id derived from the run and the task: a retried task
re-attaches to its job; a killed or timed-out task stops it. XCom carries ids only.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetOrTimeSchedule, dag, get_current_context, task

from bertops.orchestration import retrain as steps
from bertops.orchestration.dag_defaults import (
    TAGS,
    dag_config,
    default_args,
    future_ticks_only,
    ray_task_timeout,
)
from bertops.orchestration.failures import run_failures
from bertops.orchestration.operators import RayJobOperator
from bertops.orchestration.retrain_params import airflow_params

CFG = dag_config()


@dag(
    dag_id=steps.DAG_ID,
    schedule=AssetOrTimeSchedule(
        # Unpausing never starts the run of a past tick (dag_defaults.future_ticks_only).
        timetable=future_ticks_only(CFG.orchestration.retrain_schedule),
        # A new data version or drift seen by bert_monitor; `|` is any of them (a list would wait for all).
        assets=Asset(steps.DATA_ASSET) | Asset(steps.DRIFT_ASSET),
    ),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(CFG),
    params=airflow_params(),
    tags=[*TAGS, "training", "ray", "mlflow"],
    doc_md=__doc__,
)
def bert_retrain() -> None:
    @task
    def check_params() -> dict:
        return steps.check_params(dict(get_current_context()["params"]))

    @task(pool=CFG.orchestration.dvc_pool)
    def prepare_data() -> dict:
        ctx = get_current_context()
        return {**steps.prepare_data(dict(ctx["params"]), ctx["run_id"]), **steps.drift_trigger(ctx)}

    pretrain = RayJobOperator(
        task_id="pretrain",
        build=steps.build_pretrain,
        on_result=steps.after_pretrain,
        execution_timeout=ray_task_timeout(CFG),
    )
    finetune = RayJobOperator(
        task_id="finetune",
        build=steps.build_finetune,
        on_result=steps.after_finetune,
        execution_timeout=ray_task_timeout(CFG),
        trigger_rule="none_failed",
    )

    @task
    def evaluate(trained: dict) -> dict:
        ctx = get_current_context()
        return steps.evaluate(steps.run_params(ctx), trained, ctx["run_id"])

    @task
    def register(trained: dict, prepared: dict, _evaluated: dict) -> dict:
        ctx = get_current_context()
        return steps.register(steps.run_params(ctx), trained, prepared, ctx["run_id"], _evaluated)

    @task
    def promotion_gate(registered: dict) -> dict:
        return steps.promotion_gate(steps.run_params(get_current_context()), registered)

    @task
    def update_serving(gate: dict) -> dict:
        return steps.update_serving(dict(get_current_context()["params"]), gate)

    # all_done: it also runs after a failure, to say why; on_failure_callback=None: its own failure repeats it.
    @task(trigger_rule="all_done", on_failure_callback=None)
    def summary() -> dict:
        ctx = get_current_context()
        ids = (
            "check_params",
            "prepare_data",
            "pretrain",
            "finetune",
            "evaluate",
            "register",
            "promotion_gate",
            "update_serving",
        )
        xcoms = {t: ctx["ti"].xcom_pull(task_ids=t) for t in ids}
        return steps.summary(dict(ctx["params"]), ctx["run_id"], xcoms, run_failures(ctx, ids))

    prepared = prepare_data()
    check_params() >> prepared >> pretrain >> finetune
    evaluated = evaluate(finetune.output)
    gate = promotion_gate(register(finetune.output, prepared, evaluated))
    update_serving(gate) >> summary()


bert_retrain()
