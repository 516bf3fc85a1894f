"""The serving app's recording hook and ``POST /feedback``, in-process: the real FastAPI routes of the deployment
class through Starlette's TestClient (as tests/serving/test_http_api.py), with a real recorder writing Parquet.

The writer thread is not started, so the queue stays full once filled, as when the writer falls behind: every
request must still be answered, and the dropped texts counted. Under real Ray Serve the same hook runs in
test_closed_loop.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.serving.test_http_api import KeywordRegistry, _self_dependency

from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import FEEDBACK, RECORDS, Store
from bertops.serving.app import BertopsService, ServiceSettings, api
from bertops.serving.metrics import ServingMetrics
from bertops.serving.model_store import ModelManager


@pytest.fixture(scope="module")  # one app for the module: Serve's batch queue stays on one event loop
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    user_cls = next(c for c in BertopsService.func_or_class.__mro__ if c.__name__ == "BertopsService")
    service = object.__new__(user_cls)
    service.settings = ServiceSettings(tracking_uri="memory://", model_name="m", max_batch_size=4)
    service.metrics = ServingMetrics()
    settings = RecorderSettings(
        store_uri=str(tmp_path_factory.mktemp("recording") / "store"), queue_size=2, flush_interval_s=3600
    )
    service.recorder = Recorder(settings, registry=service.metrics.registry, start=False)
    reg = KeywordRegistry()
    manager = ModelManager(reg.source(), loader=reg.load, on_switch=service.metrics.model_switched)
    service._setup({"m": manager}, behind_proxy=False)  # the request path of a replica, around this manager
    asyncio.run(service.manager.refresh())
    api.dependency_overrides[_self_dependency()] = lambda: service
    try:
        with TestClient(api, client=("127.0.0.1", 50000)) as c:
            c.service = service
            yield c
    finally:
        api.dependency_overrides.clear()


def test_a_full_queue_drops_records_and_answers_every_request(client: TestClient) -> None:
    answers = [client.post("/predict", json={"texts": [f"good {i}", "dull"]}, headers={"X-Request-ID": f"q{i}"})
               for i in range(6)]  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 6
    assert all(len(a.json()["predictions"]) == 2 for a in answers)
    metrics = client.get("/metrics").text
    assert 'bertops_monitoring_texts_total{outcome="queued"} 4.0' in metrics
    assert 'bertops_monitoring_texts_total{outcome="dropped"} 8.0' in metrics
    assert client.service.recorder.flush() == 4
    rows = Store(client.service.recorder.settings.store_uri).read(RECORDS).to_pylist()
    assert [(r["request_id"], r["index"], r["label"]) for r in rows] == [
        ("q0", 0, "positive"), ("q0", 1, "negative"), ("q1", 0, "positive"), ("q1", 1, "negative")
    ]  # fmt: skip
    assert (
        rows[0]["model"] == "m" and rows[0]["version"] == "1" and rows[0]["confidence"] == pytest.approx(0.9)
    )


def test_feedback_is_stored_beside_the_records(client: TestClient) -> None:
    ok = client.post("/feedback", json={"request_id": "fb1", "label": "negative"})
    assert ok.status_code == 202 and ok.json() == {"accepted": True, "request_id": "fb1"}
    bad = client.post("/feedback", json={"request_id": "fb1", "label": "sideways"})
    assert bad.status_code == 400 and "'sideways' is not one of the model's labels" in bad.json()["error"]
    missing = client.post("/feedback", content=b'{"label": "negative"}')
    assert missing.status_code == 400 and "field 'request_id'" in missing.json()["error"]
    client.service.recorder.flush()
    rows = Store(client.service.recorder.settings.store_uri).read(FEEDBACK).to_pylist()
    assert [(f["request_id"], f["index"], f["label"]) for f in rows] == [("fb1", 0, "negative")]
    assert 'bertops_serving_requests_total{route="/feedback",status="400"} 2.0' in client.get("/metrics").text
