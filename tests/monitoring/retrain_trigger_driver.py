"""Wait for the ``bert_retrain`` run a real scheduler created from a ``bertops_drift`` event, and read what its
tasks would see: the run's consumed asset events as the execution API sends them to a worker, turned into the
``triggering_asset_events`` of the task context by the Task SDK, then bertops' lineage of the run from them.

    python retrain_trigger_driver.py <timeout_s>    # env: AIRFLOW_HOME and the rest (tests/monitoring)

Prints ``DRIVER {"run_id", "run_type", "state", "events": [extra...], "drift": {...}, "lineage": {...}}`` and
marks the run failed (its tasks never ran: the test keeps the pool empty), or ``DRIVER null`` after the timeout.
"""

import json
import sys
import time

from airflow.api_fastapi.execution_api.datamodels.taskinstance import DagRun as WorkerDagRun
from airflow.models.asset import AssetEvent
from airflow.models.dagrun import DagRun
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from sqlalchemy import select
from sqlalchemy.orm import configure_mappers, joinedload

from bertops.orchestration import retrain, tasks

configure_mappers()  # backrefs such as DagRun.consumed_asset_events (declared on AssetEvent) exist after this
deadline = time.monotonic() + float(sys.argv[1])
found = None
while found is None and time.monotonic() < deadline:
    with create_session() as session:
        run = session.scalars(
            select(DagRun).filter_by(dag_id=retrain.DAG_ID, run_type="asset_triggered")
            .options(joinedload(DagRun.consumed_asset_events).joinedload(AssetEvent.asset))
        ).unique().first()  # fmt: skip
        if run is not None:
            wire = WorkerDagRun.model_validate(run).model_dump(mode="json")  # what ti_run sends a worker
            found = {"run_id": run.run_id, "run_type": str(run.run_type), "state": str(run.state)}
            run.set_state(DagRunState.FAILED)  # done with: no later scheduler of this home may start it
    if found is None:
        time.sleep(1)
if found is None:
    print("DRIVER null", flush=True)
    sys.exit(0)
events = TriggeringAssetEventsAccessor.build(
    AssetEventDagRunReferenceResult.model_validate(e) for e in wire["consumed_asset_events"]
)
drift = retrain.drift_trigger({"triggering_asset_events": events})  # what prepare_data adds to its XCom
found.update(
    events=[e["extra"] for e in wire["consumed_asset_events"]],
    assets=[e["asset"]["name"] for e in wire["consumed_asset_events"]],
    drift=drift,
    lineage=tasks.registry_lineage(drift, []),  # the tags `register` puts on the model version
)
print("DRIVER " + json.dumps(found, default=str), flush=True)
