"""Registered model versions: register a candidate with its lineage tags and model card; look versions up.

    from bertops.registry import register_candidate
    ref = register_candidate("models:/m-1234", tracking_uri=uri, model_name="bert-sentiment",
                             training_run_id=run_id, data_version="a1b2c3")
    ref  # {"name": "bert-sentiment", "version": "4", "model_uri": "models:/bert-sentiment/4"}

Each candidate becomes a new version carrying the ``challenger`` alias. Aliases only (``champion``,
``challenger``, ``previous-champion``); registry stages are deprecated and never used. The tag and alias
names live here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bertops.registry.errors import RegistryError
from bertops.registry.model_card import ModelCardInfo, render_model_card
from bertops.training.tracking import TAG_TRAINED

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
TAG_GIT = "bertops.git_commit"
TAG_DATA = "bertops.data_version"
TAG_TRAINING_RUN = "bertops.training_run_id"
TAG_RAY_JOB = "bertops.ray_job_id"
TAG_AIRFLOW_RUN = "bertops.airflow_run_id"
TAG_GATE = "bertops.gate"
TAG_GATE_REASON = "bertops.gate_reason"
TAG_GATE_CHAMPION = (
    "bertops.gate_champion"  # the champion version the gate compared with ("none": first model)
)
TAG_EVAL_RUN = "bertops.evaluation_run_id"
TAG_OVERRIDES = "bertops.overrides"  # JSON list of the run's params.yaml overrides
TAG_DVC_EXPERIMENT = "bertops.dvc_experiment"
TAG_DVC_REV = "bertops.dvc_rev"  # the DVC commit or experiment the data came from
TAG_DATA_OUTPUTS = "bertops.data_outputs"  # JSON {stage output: hash} of that data (bertops reproduce)
TAG_TEST_SHA = "bertops.test_data_sha256"
TAG_PREVIOUS = "bertops.previous_champion"  # the champion this version replaced when promoted
TAG_PROMOTED_AT = "bertops.promoted_at"
TAG_ROLLED_BACK_AT = "bertops.rolled_back_at"
TAG_APPROVAL = "approval"  # set by a reviewer in the MLflow UI: approved / rejected
TAG_MAX_CHARS = 5000


def git_commit(default: str = "unknown") -> str:
    """The current git commit of the working directory, or ``default`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return default
    return out.stdout.strip() or default


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The model version, or :class:`RegistryError` naming the model or version that does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name!r} does not exist (see `bertops models`)") from None
        raise
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name!r} has no version {version!r}") from None
        raise


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value)[:TAG_MAX_CHARS])


def _training_run(client: MlflowClient, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(
            f"training run {run_id!r} not found on the tracking server: {exc.message}"
        ) from None


def training_config(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    """The fine-tuning parameters of the training run, for the model card (empty when unknown).

    Not the ``model.*`` keys: a run initialised from a checkpoint builds the checkpoint's architecture whatever
    ``model.preset`` says; the card's "What was trained" section states it from the bundle (:func:`trained`).
    """
    if not run_id:
        return {}
    params = _training_run(client, run_id).data.params
    return {k: v for k, v in params.items() if k.startswith(("finetune.", "finetune_data.", "run.init"))}


def trained(client: MlflowClient, run_id: str | None) -> dict[str, Any] | None:
    """The training run's ``bertops.trained`` record (architecture, init and its hash, tokenizer), if any."""
    if not run_id:
        return None
    raw = _training_run(client, run_id).data.tags.get(TAG_TRAINED)
    return json.loads(raw) if raw else None


def card_info(client: MlflowClient, name: str, version: str) -> ModelCardInfo:
    """A :class:`ModelCardInfo` filled from the version's tags (metrics are added by the caller)."""
    mv = get_version(client, name, version)
    tags = dict(mv.tags)
    return ModelCardInfo(
        name=name,
        version=str(version),
        data_version=tags.get(TAG_DATA),
        git_commit=tags.get(TAG_GIT),
        training_run_id=tags.get(TAG_TRAINING_RUN),
        ray_job_id=tags.get(TAG_RAY_JOB),
        airflow_run_id=tags.get(TAG_AIRFLOW_RUN),
        training_config=training_config(client, tags.get(TAG_TRAINING_RUN)),
        trained=trained(client, tags.get(TAG_TRAINING_RUN)),
        evaluation_run_id=tags.get(TAG_EVAL_RUN),
        overrides=tags.get(TAG_OVERRIDES),
        dvc_experiment=tags.get(TAG_DVC_EXPERIMENT),
    )


def register_candidate(
    source_uri: str,
    *,
    tracking_uri: str,
    model_name: str,
    training_run_id: str | None = None,
    data_version: str | None = None,
    commit: str | None = None,
    ray_job_id: str | None = None,
    airflow_run_id: str | None = None,
    labels: list[str] | None = None,
    lineage: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Register ``source_uri`` (a logged MLflow model) as a new version of ``model_name``, alias ``challenger``.

    The version gets the lineage tags and a first model card (metrics follow when the gate runs). Returns
    ``{"name", "version", "model_uri"}``. An unreachable server fails before anything is written.
    """
    import mlflow

    from bertops.registry.client import connect

    client = connect(tracking_uri)
    if training_run_id:
        training_config(client, training_run_id)  # fail early on an unknown run, before registering
    tags = {
        TAG_GIT: commit or git_commit(),
        TAG_DATA: data_version or "unknown",
        TAG_TRAINING_RUN: training_run_id,
        TAG_RAY_JOB: ray_job_id,
        TAG_AIRFLOW_RUN: airflow_run_id,
        **(lineage or {}),  # e.g. the run's overrides and DVC experiment
    }
    mv = mlflow.register_model(source_uri, model_name, tags={k: v for k, v in tags.items() if v})
    version = str(mv.version)
    info = card_info(client, model_name, version)
    info.labels = list(labels or [])
    client.update_model_version(model_name, version, description=render_model_card(info))
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    logger.info("registered %s as %s v%s (alias %s)", source_uri, model_name, version, CHALLENGER)
    return {"name": model_name, "version": version, "model_uri": model_uri(model_name, version)}


def list_versions(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every version of ``model_name`` with its aliases and gate status, newest first."""
    from bertops.registry.client import connect

    client = connect(tracking_uri)
    model = client.get_registered_model(model_name) if _exists(client, model_name) else None
    if model is None:
        raise RegistryError(f"registered model {model_name!r} does not exist")
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name = '{model_name}'")
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(aliases.get(str(v.version), [])),
            "gate": v.tags.get(TAG_GATE, ""),
            "approval": v.tags.get(TAG_APPROVAL, ""),
            "data_version": v.tags.get(TAG_DATA, ""),
            "created": v.creation_timestamp,
        }
        for v in versions
    ]
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def _exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
