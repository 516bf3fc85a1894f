"""Run ``bert_retrain`` once with ``dag.test()`` (in its own process: Airflow reads its config at import).

    python retrain_driver.py '<conf json>'   # env: AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER, BERTOPS_* ...

Prints ``DRIVER {"state": ..., "run_id": ..., "tasks": {task_id: state}, "xcoms": {"summary": ...}}``.
"""

import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
dag = bag.get_dag("bert_retrain")
run = dag.test(run_conf=json.loads(sys.argv[1]))
tis = run.get_task_instances()
tasks = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}
xcoms = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in tis if ti.task_id == "summary"}
state = str(getattr(run.state, "value", run.state))
print("DRIVER " + json.dumps({"state": state, "run_id": run.run_id, "tasks": tasks, "xcoms": xcoms},
                             default=str), flush=True)  # fmt: skip
