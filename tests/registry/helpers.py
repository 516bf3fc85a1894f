"""Helpers shared by the registry tests: bare registered models whose versions need no real model."""

from __future__ import annotations

import uuid

from bertops.registry import registry as reg


def make_model(uri: str, n_versions: int) -> tuple[str, object]:
    """A fresh registered model with ``n_versions`` versions (sources: artifact paths of one run)."""
    import mlflow

    from bertops.registry.client import connect

    client = connect(uri)
    name = f"m-{uuid.uuid4().hex[:8]}"
    run = client.create_run(mlflow.set_experiment("registry-tests").experiment_id)
    client.create_registered_model(name)
    for i in range(n_versions):
        client.create_model_version(name, source=f"{run.info.artifact_uri}/v{i + 1}", run_id=run.info.run_id)
    return name, client


def gate_passed(client: object, name: str, version: str, against: str | None) -> None:
    reg.set_tags(client, name, version, {reg.TAG_GATE: "passed", reg.TAG_GATE_CHAMPION: against or "none"})


def aliases(client: object, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
