"""Orchestration: Airflow DAG task bodies, the Ray Jobs client, the retrain trigger and the local stack.

- :mod:`bertops.orchestration.retrain_params`: the ONE JSON schema of ``bert_retrain``'s parameters, used by the
  DAG (``Param``s) and by ``bertops retrain`` (checked before sending).
- :mod:`bertops.orchestration.ray_jobs`: submit-or-re-attach to Ray jobs with a run-derived submission id.
- :mod:`bertops.orchestration.operators`: the Airflow operator that runs a Ray job (stops it on kill/timeout).
- :mod:`bertops.orchestration.dvc_ops`: pull / repro / push and the data version from ``dvc.lock``.
- :mod:`bertops.orchestration.tasks`: what each DAG task does (plain functions, testable without Airflow).
- :mod:`bertops.orchestration.airflow_api`: Airflow REST API v2 client (JWT from ``/auth/token``).
- :mod:`bertops.orchestration.stack`: ``bertops stack up|down|status`` (Airflow, Ray, MLflow, serving).

Nothing here imports Airflow, Ray, MLflow or TensorFlow at module import time except ``operators`` (Airflow's
task SDK, which DAG files import anyway).
"""
