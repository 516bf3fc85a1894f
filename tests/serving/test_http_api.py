"""The HTTP layer of the serving app, in-process: FastAPI routes of the real deployment class driven through
Starlette's TestClient, with the model manager fed by an in-memory registry. Fast; the same routes run under
real Ray Serve and MLflow in test_deployed_service.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from bertops.monitoring.recorder import Recorder
from bertops.serving.app import BertopsService, ServiceSettings, api
from bertops.serving.metrics import ServingMetrics
from bertops.serving.model_store import LoadedModel, ModelManager

from .test_model_manager import MemoryRegistry


class KeywordPyfunc:
    """``predict(DataFrame)`` with the classifier output contract: "good" is positive, anything else negative."""

    def predict(self, data: pd.DataFrame) -> pd.DataFrame:
        pos = [0.9 if "good" in t else 0.2 for t in data["text"]]
        return pd.DataFrame({
            "label": ["positive" if p > 0.5 else "negative" for p in pos],
            "probability": [max(p, 1 - p) for p in pos],
            "prob_negative": [1 - p for p in pos],
            "prob_positive": pos,
        })  # fmt: skip


class KeywordRegistry(MemoryRegistry):
    def load(self, source, version: str) -> LoadedModel:
        loaded = super().load(source, version)
        loaded.pyfunc, loaded.labels = KeywordPyfunc(), ["negative", "positive"]
        return loaded


def _self_dependency():
    """The dependency Ray Serve's class-based view uses to pass the replica instance as ``self``."""
    for route in api.routes:
        for dep in getattr(getattr(route, "dependant", None), "dependencies", []):
            if dep.name == "self":
                return dep.call
    raise AssertionError("no 'self' dependency on the ingress routes")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    import ray.serve.batching

    user_cls = next(c for c in BertopsService.func_or_class.__mro__ if c.__name__ == "BertopsService")
    service = object.__new__(user_cls)
    service.settings = ServiceSettings(
        tracking_uri="memory://", model_name="m", max_batch_size=4, batch_wait_timeout_s=0.05,
        max_texts_per_request=8, max_text_bytes=100, max_body_bytes=2000,
    )  # fmt: skip
    service.limits = service.settings.limits
    service.metrics = ServingMetrics()
    service.recorder = Recorder.from_settings({"enabled": False, "store_uri": "."})  # monitoring off
    reg = KeywordRegistry()
    service.manager = ModelManager(reg.source(), loader=reg.load, on_switch=service.metrics.model_switched)
    service.managers = {"m": service.manager}  # the one served model, the default
    service._model_call = asyncio.Lock()
    service._behind_proxy = False  # no Ray proxy here: the app echoes X-Request-ID itself
    asyncio.run(service.manager.refresh())
    # Outside a replica there is no deployment config to compare the batch size with: skip that warning only.
    original = ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests
    ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    service._predict_batch.set_max_batch_size(4)
    service._predict_batch.set_batch_wait_timeout_s(0.05)
    api.dependency_overrides[_self_dependency()] = lambda: service
    try:
        with TestClient(api, client=("127.0.0.1", 50000)) as c:
            c.registry = reg
            yield c
    finally:
        api.dependency_overrides.clear()
        ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = original


def test_predict_and_version(client: TestClient) -> None:
    r = client.post("/predict", json={"texts": ["a good film", "meh"]}, headers={"X-Request-ID": "r1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("m", "1")
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
    assert body["predictions"][0]["probabilities"] == {"negative": pytest.approx(0.1), "positive": 0.9}
    assert r.headers["x-request-id"] == "r1"


def test_more_texts_than_a_batch(client: TestClient) -> None:
    r = client.post("/predict", json={"texts": ["good"] * 7})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 7


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty request body"),
        (b'{"texts": "x"}', 422, "must be a list of strings"),
        (b'{"texts": []}', 422, "empty list"),
        (b'{"texts": ["a", {}]}', 422, "texts[1]: expected a string, got object"),
        (json.dumps({"texts": ["a"] * 9}).encode(), 413, "limit is 8"),
        (json.dumps({"texts": ["x" * 101]}).encode(), 413, "texts[0] is 101 UTF-8 bytes"),
        (json.dumps({"texts": ["a"], "pad": "x" * 3000}).encode(), 413, "limit is 2000"),
    ],
)
def test_bad_input(client: TestClient, body: bytes, status: int, message: str) -> None:
    r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_health_ready_metadata_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["version"] == "1"
    meta = client.get("/metadata").json()
    assert meta["model"]["labels"] == ["negative", "positive"] and meta["ready"]
    metrics = client.get("/metrics").text
    assert 'bertops_serving_model_info{model="m",version="1"} 1.0' in metrics
    assert 'bertops_serving_errors_total{reason="too_large",route="/predict"}' in metrics
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_concurrent_requests_share_batches(client: TestClient) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda i: client.post("/predict", json={"texts": [f"good {i}"]}).status_code, range(16))
        )
    assert codes == [200] * 16
    metrics = client.get("/metrics").text
    largest = [
        line
        for line in metrics.splitlines()
        if line.startswith('bertops_serving_batch_requests_bucket{le="1.0"}')
    ]
    count = [line for line in metrics.splitlines() if line.startswith("bertops_serving_batch_requests_count")]
    assert float(largest[0].split()[-1]) < float(count[0].split()[-1]), "no batch held more than one request"


def test_reload_follows_the_alias_and_refuses_broken_versions(client: TestClient) -> None:
    client.registry.alias, client.registry.broken = "2", {"2"}
    r = client.post("/admin/reload")
    assert (
        r.status_code == 200
        and r.json()["switched"] is False
        and "version 2 not served" in r.json()["message"]
    )
    assert client.post("/predict", json={"texts": ["good"]}).json()["version"] == "1"
    client.registry.alias = "3"
    assert client.post("/admin/reload").json() == {
        "switched": True, "version": "3", "previous_version": "1", "message": "switched from version 1 to 3",
    }  # fmt: skip
    assert client.post("/predict", json={"texts": ["good"]}).json()["version"] == "3"


def test_reload_from_another_host_needs_the_token(client: TestClient) -> None:
    remote = TestClient(api, client=("10.1.2.3", 50000))
    r = remote.post("/admin/reload")
    assert r.status_code == 403 and "loopback" in r.json()["error"]
