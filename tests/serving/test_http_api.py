"""The HTTP layer of the serving app, in-process: FastAPI routes of the real deployment class driven through
Starlette's TestClient, with the model manager fed by an in-memory registry. Fast; the same routes run under
real Ray Serve and MLflow in test_deployed_service.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pandas as pd
import psutil
import pytest
import uvicorn
from fastapi.testclient import TestClient

from bertops.monitoring.recorder import Recorder
from bertops.serving.app import BertopsService, ServiceSettings, api
from bertops.serving.metrics import ServingMetrics
from bertops.serving.model_store import LoadedModel, ModelManager

from .test_model_manager import MemoryRegistry


class KeywordPyfunc:
    """``predict(DataFrame)`` with the classifier output contract: "good" is positive, anything else negative."""

    def predict(self, data: pd.DataFrame) -> pd.DataFrame:
        time.sleep(0.01)  # a model call takes a while, so that concurrent requests queue behind it
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
    user_cls = next(c for c in BertopsService.func_or_class.__mro__ if c.__name__ == "BertopsService")
    service = object.__new__(user_cls)
    service.settings = ServiceSettings(
        tracking_uri="memory://", model_name="m", max_batch_size=4,
        max_texts_per_request=8, max_text_bytes=100, max_body_bytes=2000,
    )  # fmt: skip
    service.metrics = ServingMetrics()
    service.recorder = Recorder.from_settings({"enabled": False, "store_uri": "."})  # monitoring off
    reg = KeywordRegistry()
    manager = ModelManager(reg.source(), loader=reg.load, on_switch=service.metrics.model_switched)
    service._setup({"m": manager}, behind_proxy=False)  # no Ray proxy here: the app echoes X-Request-ID
    asyncio.run(service.manager.refresh())
    api.dependency_overrides[_self_dependency()] = lambda: service
    try:
        with TestClient(api, client=("127.0.0.1", 50000)) as c:
            c.registry = reg
            c.service = service
            yield c
    finally:
        api.dependency_overrides.clear()


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
        (b"[" * 900 + b"]" * 900, 400, "nested more than 32 levels deep"),
        (b'{"texts": ["\\ud800"]}', 400, "body.texts[0] holds a lone surrogate"),
    ],
)
def test_bad_input(client: TestClient, body: bytes, status: int, message: str) -> None:
    r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text


LONE_SURROGATE = b'{"texts": ["\\ud800"], "inputs": ["\\udfff"], "request_id": "\\ud800", "label": "x"}'
HUGE_NUMBER = b'{"texts": ["a"], "request_id": "r", "index": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("body", [LONE_SURROGATE, HUGE_NUMBER], ids=["lone-surrogate", "5000-digit-number"])
@pytest.mark.parametrize(
    "route", ["/predict", "/models/m/predict", "/v2/models/m/infer", "/invocations", "/feedback"]
)
def test_no_body_gets_a_5xx(client: TestClient, route: str, body: bytes) -> None:
    r = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
def test_a_body_that_is_not_json_is_a_415(client: TestClient, content_type: str) -> None:
    r = client.post("/predict", content=b'{"texts": ["good"]}', headers={"Content-Type": content_type})
    assert r.status_code == 415 and content_type in r.json()["error"], r.text
    r = client.post("/v2/models/m/infer", content=b"{}", headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text


def test_open_inference_protocol_in_process(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/m").json()
    assert meta["name"] == "m" and meta["versions"] == [client.get("/readyz").json()["version"]]
    tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a good film", "meh"]}
    r = client.post("/v2/models/m/infer", json={"id": "q1", "inputs": [tensor]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert r.json()["id"] == "q1" and out["label"] == ["positive", "negative"]
    assert out["probabilities"] == pytest.approx([0.1, 0.9, 0.8, 0.2])
    assert client.get("/v2/models/nope").status_code == 404
    assert client.post("/v2/models/nope/infer", json={"inputs": [tensor]}).status_code == 404


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


def _non_loopback_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return None


def test_reload_is_refused_to_non_loopback_callers(client: TestClient, monkeypatch) -> None:
    """A real HTTP server (uvicorn) on this machine's non-loopback address, called from that address: the
    peer the app sees is not loopback, so the reload is refused without the token and allowed with it."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    server = uvicorn.Server(uvicorn.Config(api, host=address, port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{address}:{port}/admin/reload"
        with httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as http:
            monkeypatch.delenv("BERTOPS_SERVING_ADMIN_TOKEN", raising=False)
            r = http.post(url)
            assert r.status_code == 403 and f"not from {address}" in r.json()["error"], r.text
            monkeypatch.setenv("BERTOPS_SERVING_ADMIN_TOKEN", "s3cret")
            assert http.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
            r = http.post(url, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.json()["version"], r.text
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_service_bound_beyond_loopback_wants_the_token_even_from_loopback(
    client: TestClient, monkeypatch
) -> None:
    # Behind HAProxy every connection comes from 127.0.0.1: on such a service the peer proves nothing.
    monkeypatch.delenv("BERTOPS_SERVING_ADMIN_TOKEN", raising=False)
    monkeypatch.setattr(client.service.settings, "host", "0.0.0.0")
    r = client.post("/admin/reload")
    assert r.status_code == 403 and "bound to loopback" in r.json()["error"]
