"""Run ``bert_monitor`` once with ``dag.test()`` in its own process (Airflow reads its config at import) and
report the task states and the ``bertops_drift`` Asset events it left in the metadata DB.

    python monitor_driver.py    # env: AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER, BERTOPS_PROJECT_DIR
    # BERTOPS_TEST_SCHEDULE_RETRAIN=1: first unpause bert_retrain and empty the default pool (see below)

Prints ``DRIVER {"state", "tasks": {task_id: state}, "events": [extra, ...], "retrain_assets": [...]}``.
"""

import json
import os

from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.models.dag import DagModel
from airflow.models.pool import Pool
from airflow.utils.session import create_session

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
if os.environ.get("BERTOPS_TEST_SCHEDULE_RETRAIN"):
    # For a real scheduler to queue bert_retrain on the event (the DAGs serialised already): bert_retrain
    # unpaused (a paused DAG's asset events queue nothing), and no pool slot, so none of its tasks start.
    with create_session() as session:
        session.get(DagModel, "bert_retrain").is_paused = False
    Pool.create_or_update_pool("default_pool", 0, "no task runs: tests/monitoring", include_deferred=False)
run = bag.get_dag("bert_monitor").test()
tasks = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
with create_session() as session:
    events = [
        e.extra
        for e in session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        .filter(AssetModel.name == "bertops_drift").order_by(AssetEvent.id)
    ]  # fmt: skip
retrain = bag.get_dag("bert_retrain").timetable.asset_condition
names = [type(retrain).__name__, *sorted(a.name for a in getattr(retrain, "objects", ()))]
state = str(getattr(run.state, "value", run.state))
print("DRIVER " + json.dumps({"state": state, "tasks": tasks, "events": events, "retrain_assets": names},
                             default=str), flush=True)  # fmt: skip
