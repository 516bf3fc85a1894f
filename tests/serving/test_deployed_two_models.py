"""Two models served at once (a classifier and an NER model), each following its own ``champion`` alias, over
real HTTP from Ray Serve on the session's Ray head, versions from the real MLflow server.

The NER versions are real bertops NER pyfuncs (``bertops.model.pyfunc.log_bundle``) on tiny bundles whose head
answers one tag everywhere (tests/model/ner_bundles.py): v1 ``I-PER`` (one entity from the first word to the
last), v2 ``B-LOC`` (every word an entity), so which version answered shows in the entities themselves.

Named to sort before test_http_api.py, for the reason test_deployed_service.py gives (Serve cannot pickle the
deployment class once that module has driven it in-process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.model.ner_bundles import constant_tag_bundle

from bertops.serving.client import notify_reload, predict

from .conftest import Registry, Service, start_service

pytestmark = [pytest.mark.slow]

TEXT = "Anna Smith flew to Zürich  today"


def _register_ner(registry: Registry, workdir: Path, tag: str) -> str:
    import mlflow

    from bertops.model.pyfunc import log_bundle

    bundle = constant_tag_bundle(workdir / f"ner-{tag}", tag)
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    mlflow.set_experiment("serving-tests")
    with mlflow.start_run():
        info = log_bundle(bundle, name="model", registered_model_name=registry.name)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def served(ray_address: str, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    ner = Registry(tracking_uri=registry.tracking_uri, name=f"{registry.name}-ner")
    workdir = tmp_path_factory.mktemp("ner-serving")
    registry.set_alias(registry.register_keyword(bias=0.0, sleep_s=0.01))
    ner.set_alias(_register_ner(ner, workdir, "I-PER"))
    for service in start_service(
        ray_address, registry, extra=(f"registry.ner_model_name={ner.name}",), poll_interval_s=1.0,
        max_batch_size=8, batch_wait_timeout_s=0.02,
    ):  # fmt: skip
        deadline = time.monotonic() + 300  # readyz says the default model is up; wait for the NER one too
        while not all(m["ready"] for m in httpx.get(f"{service.url}/metadata").json()["models"]):
            assert time.monotonic() < deadline, httpx.get(f"{service.url}/metadata").json()
            time.sleep(1)
        yield {"service": service, "ner": ner, "workdir": workdir}


def test_both_models_are_served_and_listed(served: dict) -> None:
    service: Service = served["service"]
    ner: Registry = served["ner"]
    meta = httpx.get(f"{service.url}/metadata").json()
    listed = {m["name"]: m for m in meta["models"]}
    assert set(listed) == {service.registry.name, ner.name}
    assert listed[service.registry.name]["default"] and not listed[ner.name]["default"]
    assert listed[ner.name]["model"]["task"] == "ner" and listed[ner.name]["model"]["version"] == "1"
    assert meta["model"]["model"] == service.registry.name  # the default model, as before

    answer = predict(service.url, [TEXT, ""], model=ner.name)
    assert answer["model"] == ner.name and answer["version"] == "1"
    assert answer["predictions"] == [
        {"entities": [{"text": TEXT, "type": "PER", "start": 0, "end": len(TEXT), "score": pytest.approx(1.0, abs=1e-3)}]},
        {"entities": []},
    ]  # fmt: skip
    default = predict(service.url, ["a good film"])
    named = predict(service.url, ["a good film"], model=service.registry.name)
    assert (
        default == named
        and default["model"] == service.registry.name
        and "label" in default["predictions"][0]
    )
    missing = httpx.post(f"{service.url}/models/no-such-model/predict", json={"texts": ["x"]})
    assert missing.status_code == 404 and ner.name in missing.json()["error"]
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert "/models/{name}/predict" in spec["paths"]


def test_cli_prints_the_text_with_its_entities_marked(served: dict) -> None:
    from typer.testing import CliRunner

    from bertops.cli import app

    service: Service = served["service"]
    result = CliRunner().invoke(app, ["predict", "--model", served["ner"].name, "--url", service.url, TEXT])
    assert result.exit_code == 0, result.output
    assert f"[{TEXT}](PER)" in result.output and f"{served['ner'].name} version 1" in result.output


def test_ner_promotion_under_load_on_both_models_fails_no_request(served: dict) -> None:
    service: Service = served["service"]
    ner: Registry = served["ner"]
    stop = threading.Event()
    seen: dict[str, set[str]] = {"ner": set(), "cls": set()}
    failures: list[str] = []

    def stream(kind: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                path = f"/models/{ner.name}/predict" if kind == "ner" else "/predict"
                try:
                    r = client.post(f"{service.url}{path}", json={"texts": [TEXT, "paris"]})
                except httpx.HTTPError as exc:
                    failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                seen[kind].add(body["version"])
                if kind == "ner":  # each version's answer is its own, whole: never a mix within a request
                    first = body["predictions"][0]["entities"]
                    expected = 1 if body["version"] == "1" else 6  # I-PER: one entity; B-LOC: one per word
                    if len(first) != expected:
                        failures.append(f"ner v{body['version']}: {first}")

    threads = [threading.Thread(target=stream, args=(k,)) for k in ("ner", "ner", "cls")]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        v2 = _register_ner(ner, served["workdir"], "B-LOC")
        ner.set_alias(v2)
        assert notify_reload(service.url, model=ner.name)["version"] == v2
        deadline = time.monotonic() + 60
        while v2 not in seen["ner"] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    assert seen["ner"] == {"1", v2} and seen["cls"] == {"1"}
    meta = {m["name"]: m for m in httpx.get(f"{service.url}/metadata").json()["models"]}
    assert meta[ner.name]["model"]["version"] == v2 and meta[service.registry.name]["model"]["version"] == "1"
