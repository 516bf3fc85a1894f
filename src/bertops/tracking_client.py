"""One way to reach MLflow: resolve the tracking URI, check it answers, return an ``MlflowClient``.

    client = connect(cfg.tracking_uri())

An HTTP server that does not answer ``/health`` within a few seconds is reported at once as
:class:`TrackingUnavailable` (MLflow's own client would retry for minutes first). For the embedded SQLite
store the parent directory is created on demand. The same URI becomes the process-wide MLflow tracking and
registry URI, because ``mlflow.start_run``/``mlflow.pyfunc.load_model`` read the global one.

Evaluation and the registry both connect through here (``bertops.registry.client`` re-exports it), so that
evaluation needs nothing from the registry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server (or store) cannot be reached."""


def check_reachable(tracking_uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnavailable` naming the URI when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import httpx

    url = tracking_uri.rstrip("/") + "/health"
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} is unreachable ({type(exc).__name__}: {exc}); "
            "start it or set tracking.uri / MLFLOW_TRACKING_URI"
        ) from None
    if resp.status_code != 200:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri}: GET /health answered {resp.status_code}"
        )


def connect(tracking_uri: str) -> MlflowClient:
    """Check ``tracking_uri``, make it MLflow's global tracking/registry URI and return a client for it."""
    import mlflow

    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
