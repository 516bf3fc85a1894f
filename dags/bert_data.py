"""
### bert_data: keep the DVC data pipeline current

On its schedule (`orchestration.data_schedule`, daily by default): `dvc pull` -> `dvc repro` -> `dvc push`.
DVC re-runs only the stages whose inputs or params changed. When the data version (a hash of the stage outputs
in `dvc.lock`) changed, the `publish` task emits the **`bertops_data`** Asset, which triggers `bert_retrain`;
when nothing changed, `publish` is skipped and no Asset event is emitted.

DVC work runs in the `dvc` pool (one slot): two `dvc repro` at once would fight over the repo lock.
Code: `bertops.orchestration.tasks.data_cycle`.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from bertops.orchestration.dag_defaults import TAGS, dag_config, default_args, future_ticks_only
from bertops.orchestration.retrain import DATA_ASSET, DATA_DAG_ID

CFG = dag_config()


@dag(
    dag_id=DATA_DAG_ID,
    schedule=future_ticks_only(CFG.orchestration.data_schedule),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(CFG),
    tags=[*TAGS, "data", "dvc"],
    doc_md=__doc__,
)
def bert_data() -> None:
    @task(pool=CFG.orchestration.dvc_pool)
    def repro() -> dict:
        """pull, repro, push; returns the data version before and after."""
        from bertops.orchestration.tasks import data_cycle

        return data_cycle()

    @task(outlets=[Asset(DATA_ASSET)])
    def publish(result: dict) -> str:
        """Emit the data Asset only when the data version changed."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not result["changed"]:
            raise AirflowSkipException(f"data version unchanged ({result['data_version']}): no Asset event")
        return str(result["data_version"])

    publish(repro())


bert_data()
