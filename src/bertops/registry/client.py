"""The registry's way to MLflow: :mod:`bertops.tracking_client` (shared with evaluation, which must not import
the registry)."""

from __future__ import annotations

from bertops.tracking_client import HEALTH_TIMEOUT_S, TrackingUnavailable, check_reachable, connect

__all__ = ["HEALTH_TIMEOUT_S", "TrackingUnavailable", "check_reachable", "connect"]
