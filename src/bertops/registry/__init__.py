"""Model registry, promotion gate and promote/rollback: the functions the CLI and the Airflow DAG call.

Importing ``bertops.registry`` is cheap; MLflow loads on first use::

    from bertops.registry import register_candidate, run_gate, promote, rollback
    ref = register_candidate(model_uri, tracking_uri=cfg.tracking_uri(), model_name=cfg.registry.model_name)
    decision = run_gate(cfg, ref["name"], ref["version"], test_file)   # GateDecision; .to_dict() for XCom
    if decision.passed:
        promote(cfg, ref["name"], ref["version"])
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "register_candidate": "bertops.registry.registry",
    "list_versions": "bertops.registry.registry",
    "run_gate": "bertops.registry.promote",
    "promote": "bertops.registry.promote",
    "rollback": "bertops.registry.promote",
    "wait_for_approval": "bertops.registry.promote",
    "GateDecision": "bertops.registry.gate",
    "GateThresholds": "bertops.registry.gate",
    "decide": "bertops.registry.gate",
    "PromotionLock": "bertops.registry.lock",
    "RegistryError": "bertops.registry.errors",
    "PromotionConflict": "bertops.registry.errors",
    "TrackingUnavailable": "bertops.registry.errors",
    "EvaluationError": "bertops.registry.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bertops.registry' has no attribute {name!r}")
