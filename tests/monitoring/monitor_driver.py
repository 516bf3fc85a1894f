"""Run ``bert_monitor`` once with ``dag.test()`` in its own process (Airflow reads its config at import) and
report the task states and the ``bertops_drift`` Asset events it left in the metadata DB.

    python monitor_driver.py    # env: AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER, BERTOPS_PROJECT_DIR

Prints ``DRIVER {"state", "tasks": {task_id: state}, "events": [extra, ...], "retrain_assets": [...]}``.
"""

import json
import os

from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
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
