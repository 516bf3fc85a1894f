"""A retrain triggered by the drift Asset names the drift report in its model version's lineage tags.
(The mapping stands in for Airflow's ``triggering_asset_events`` accessor: iterating it gives the Assets,
indexing an Asset its events, each with the ``extra`` bert_monitor's ``emit`` task set.)"""

from __future__ import annotations

from types import SimpleNamespace

from airflow.sdk import Asset

from bertops.orchestration.retrain import DATA_ASSET, DRIFT_ASSET, drift_trigger
from bertops.orchestration.tasks import registry_lineage


def test_drift_event_extra_becomes_lineage_tags() -> None:
    extra = {"json_path": "/s/reports/20261201T100000/drift.json", "mlflow_run_id": "abc", "triggered": True}
    context = {"triggering_asset_events": {Asset(DATA_ASSET): [SimpleNamespace(extra={})],
                                           Asset(DRIFT_ASSET): [SimpleNamespace(extra=extra)]}}  # fmt: skip
    prepared = {"data_version": "v1", **drift_trigger(context)}
    tags = registry_lineage(prepared, [])
    assert tags["bertops.drift_report"] == extra["json_path"] and tags["bertops.drift_run_id"] == "abc"


def test_no_drift_trigger_no_tags() -> None:
    assert drift_trigger({"triggering_asset_events": {Asset(DATA_ASSET): [SimpleNamespace(extra={})]}}) == {}
    assert drift_trigger({}) == {}
    assert "bertops.drift_report" not in registry_lineage({"data_version": "v1"}, [])
