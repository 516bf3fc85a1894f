"""
### bert_monitor: has what the service sees drifted from what the champion learned?

On its schedule (`monitoring.schedule`, hourly by default) the `check` task compares the recent window of served
requests (`monitoring.window_hours`, recorded by the serving replicas) with the champion's training split:
embedding drift on the champion's pooled representations, `[UNK]` rate, length, prediction and confidence
distributions, and accuracy on feedback-labelled requests. It writes a drift report (HTML + JSON) to the
monitoring store and logs it to MLflow against the champion version.

When the drift score reaches `monitoring.drift_threshold` with at least `monitoring.min_samples` served texts in
the window, `emit` publishes the **`bertops_drift`** Asset (its extra names the report), which triggers
`bert_retrain`; otherwise `emit` is skipped and nothing is triggered.
Code: `bertops.monitoring.check.check_now`.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, get_current_context, task

from bertops.orchestration.dag_defaults import TAGS, dag_config, default_args, future_ticks_only
from bertops.orchestration.retrain import DRIFT_ASSET, MONITOR_DAG_ID

CFG = dag_config()


@dag(
    dag_id=MONITOR_DAG_ID,
    schedule=future_ticks_only(CFG.monitoring.schedule),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(CFG),
    tags=[*TAGS, "monitoring", "drift"],
    doc_md=__doc__,
)
def bert_monitor() -> None:
    @task
    def check() -> dict:
        """Run the drift check now; returns the report's figures and where it is."""
        from bertops.monitoring.check import check_now

        return check_now()

    @task(outlets=[Asset(DRIFT_ASSET)])
    def emit(result: dict) -> str:
        """Publish the drift Asset (with the report in its extra) only when the check triggered."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not result["triggered"]:
            raise AirflowSkipException(
                f"no retrain: drift score {result['drift_score']:.2f}, {result['n_current']} texts "
                f"(needs >= {result['drift_threshold']} with >= {result['min_samples']})"
            )
        get_current_context()["outlet_events"][Asset(DRIFT_ASSET)].extra = result
        return str(result["json_path"])

    emit(check())


bert_monitor()
