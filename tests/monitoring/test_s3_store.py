"""The monitoring store on an object store: records and feedback written to ``s3://`` through pyarrow's S3
filesystem, against a real S3-compatible server (moto's standalone server, tests/infra's ``s3_server``)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from tests.infra.conftest import S3Server

from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import FEEDBACK, RECORDS, Store


class Model:
    name, version, task, pyfunc = "m", "2", "classification", None


def test_records_and_feedback_on_s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3_server.client().create_bucket(Bucket="bertops-monitoring")
    host = s3_server.endpoint.removeprefix("http://")
    uri = f"s3://bertops-monitoring/prod/monitoring?endpoint_override={host}&scheme=http"
    rec = Recorder(RecorderSettings(store_uri=uri), registry=CollectorRegistry(), start=False)
    rec.record("r1", Model(), ["a fine film", "dull"], [{"label": "positive", "probability": 0.7}] * 2)
    rec.feedback("r1", 1, "negative", None)
    assert rec.flush() == 2
    keys = s3_server.keys("bertops-monitoring")
    assert sum(k.startswith("prod/monitoring/records/") and k.endswith(".parquet") for k in keys) == 1, keys
    assert sum(k.startswith("prod/monitoring/feedback/") and k.endswith(".parquet") for k in keys) == 1, keys
    store = Store(uri)
    assert [r["text"] for r in store.read(RECORDS).to_pylist()] == ["a fine film", "dull"]
    assert store.read(FEEDBACK).to_pylist()[0]["label"] == "negative"
