"""The protocols clients already speak, for real, on one service and port: a multi-class (3-label) bertops
classifier registered in the real MLflow server, served by real Ray Serve over HTTP, next to a real
``mlflow models serve --env-manager local`` of the same version.

- ``POST /invocations`` (MLflow's scoring protocol) answers exactly as ``mlflow models serve`` does, for
  ``inputs``, ``instances``, ``dataframe_split``, ``dataframe_records`` and CSV, and for a bad request;
- the Open Inference Protocol v2 routes, by the spec's JSON;
- ``POST /predict`` answers 3-label predictions, and the direct bundle path gives the pyfunc's exact outputs.

This file sorts before test_http_api.py on purpose (see test_deployed_service.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from bertops.serving.client import predict
from bertops.serving.model_store import ModelSource, load_version

from .conftest import Registry, Service, start_mlflow_models_serve, start_service

pytestmark = [pytest.mark.slow]

LABELS = ("negative", "neutral", "positive")
TEXTS = ["a good film", "dull and long", "", "Ça commence bien — 最悪", "the film " * 40, "fine"]


@pytest.fixture(scope="module")
def version(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    v = registry.register_bertops_classifier(tmp_path_factory.mktemp("bundle3"), labels=LABELS)
    registry.set_alias(v)
    return v


@pytest.fixture(scope="module")
def service(ray_address: str, registry: Registry, version: str) -> Iterator[Service]:
    yield from start_service(ray_address, registry, poll_interval_s=60.0)


@pytest.fixture(scope="module")
def reference(registry: Registry, version: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("reference") / "mlflow-models-serve.log"
    yield from start_mlflow_models_serve(registry.tracking_uri, f"models:/{registry.name}/{version}", log)


SCORING_REQUESTS = {
    "inputs": ("application/json", json.dumps({"inputs": TEXTS})),
    "instances": ("application/json", json.dumps({"instances": TEXTS})),
    "dataframe_split": (
        "application/json",
        json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}),
    ),
    "dataframe_records": (
        "application/json",
        json.dumps({"dataframe_records": [{"text": t} for t in TEXTS]}),
    ),
    "csv": ("text/csv", "text\n" + "\n".join(json.dumps(t) for t in TEXTS[:2])),
    "params": ("application/json", json.dumps({"inputs": TEXTS[:2], "params": {"batch_size": 1}})),
    "charset": ("application/json; charset=utf-8", json.dumps({"inputs": TEXTS[:1]})),
}


@pytest.mark.parametrize("kind", list(SCORING_REQUESTS))
def test_invocations_answer_as_mlflow_models_serve(service: Service, reference: str, kind: str) -> None:
    content_type, body = SCORING_REQUESTS[kind]
    headers = {"Content-Type": content_type}
    ours = httpx.post(f"{service.url}/invocations", content=body, headers=headers, timeout=60)
    theirs = httpx.post(f"{reference}/invocations", content=body, headers=headers, timeout=60)
    assert (ours.status_code, theirs.status_code) == (200, 200), (ours.text, theirs.text)
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    assert ours.json() == theirs.json()
    predictions = ours.json()["predictions"]
    assert {f"prob_{label}" for label in LABELS} <= set(predictions[0])


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", '{"dataframe_split": {"columns": ["text"]}}'),  # no data
        ("application/json", '{"no_such_key": ["a"]}'),
        ("text/plain", "a good film"),
        ("application/json; charset=latin-1", '{"inputs": ["a"]}'),
    ],
)
def test_bad_invocations_get_mlflow_models_serves_status_and_body(
    service: Service, reference: str, content_type: str, body: str
) -> None:
    headers = {"Content-Type": content_type}
    ours = httpx.post(f"{service.url}/invocations", content=body, headers=headers, timeout=60)
    theirs = httpx.post(f"{reference}/invocations", content=body, headers=headers, timeout=60)
    assert 400 <= theirs.status_code < 500, theirs.text
    assert ours.status_code == theirs.status_code
    if theirs.headers["content-type"].startswith("application/json"):
        assert ours.json()["error_code"] == theirs.json()["error_code"]
        assert _unordered_sets(ours.json()["message"]) == _unordered_sets(theirs.json()["message"])
    else:
        assert ours.text == theirs.text


def _unordered_sets(message: str) -> str:
    """MLflow's messages print Python sets, whose order differs from process to process: sort their items."""
    return re.sub(r"\{([^{}]*)\}", lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}", message)


def test_invocations_refuses_deep_nesting_and_a_missing_content_type_with_a_4xx(service: Service) -> None:
    deep = httpx.post(f"{service.url}/invocations", content=b"[" * 5000 + b"]" * 5000,
                      headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert deep.status_code == 400 and "nested more than" in deep.json()["message"]
    bare = httpx.post(f"{service.url}/invocations", content=b'{"inputs": ["a"]}', timeout=60)
    assert bare.status_code == 415


def test_predict_answers_three_labels(service: Service, version: str) -> None:
    answer = predict(service.url, TEXTS)
    assert answer["version"] == version and len(answer["predictions"]) == len(TEXTS)
    for p in answer["predictions"]:
        assert list(p["probabilities"]) == list(LABELS) and p["label"] in LABELS
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert httpx.get(f"{service.url}/metadata").json()["model"]["labels"] == list(LABELS)


def test_open_inference_protocol_v2(service: Service, registry: Registry, version: str) -> None:
    url, name = service.url, registry.name
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    # The service also serves bert-ner by default, which this registry does not have: not ready as a whole.
    ready = httpx.get(f"{url}/v2/models/{name}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": name, "ready": True}
    meta = httpx.get(f"{url}/v2/models/{name}").json()
    assert meta["name"] == name and meta["versions"] == [version]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    probs_meta = next(o for o in meta["outputs"] if o["name"] == "probabilities")
    assert probs_meta["shape"] == [-1, 3] and probs_meta["parameters"]["labels"] == list(LABELS)
    request = {
        "id": "oip-1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}],
    }
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=request, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (name, version, "oip-1")
    out = {o["name"]: o for o in body["outputs"]}
    native = predict(url, TEXTS[:2])["predictions"]
    assert out["label"]["data"] == [p["label"] for p in native]
    assert out["probabilities"]["shape"] == [2, 3]
    assert out["probabilities"]["data"] == [p["probabilities"][lab] for p in native for lab in LABELS]
    bad = dict(request, inputs=[{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}])
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=bad, timeout=60)
    assert r.status_code == 422 and "BYTES" in r.json()["error"]
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404


@pytest.fixture(scope="module")
def loaded(registry: Registry, version: str):
    """The version loaded here, in the test process, as a replica loads it."""
    return load_version(ModelSource(registry.tracking_uri, registry.name), version)


def test_direct_bundle_path_gives_the_pyfuncs_outputs(loaded) -> None:
    assert loaded.direct is not None, "bertops' own classifier should be answered from its bundle"
    texts = TEXTS + [f"good film number {i}" for i in range(40)]
    assert loaded.direct(texts) == loaded.predict_pyfunc(texts)
    assert loaded.predict(texts) == loaded.predict_pyfunc(texts)


def test_served_answers_match_the_pyfunc_run_here(service: Service, loaded) -> None:
    """The replica (direct path, another process) and the pyfunc loaded here agree on labels and, to float
    rounding across processes, on every probability."""
    served = predict(service.url, TEXTS)["predictions"]
    here = loaded.predict_pyfunc(TEXTS)
    assert [p["label"] for p in served] == [p["label"] for p in here]
    for ours, theirs in zip(served, here, strict=True):
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
