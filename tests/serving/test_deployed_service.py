"""The serving app for real: Ray Serve on the session's Ray head, models from the real MLflow server, HTTP.

This file sorts before test_http_api.py on purpose: that module drives the deployment class in-process, which
leaves batch-queue state (a weakref) on the class, and Serve then cannot pickle the class in the same pytest
process ("cannot pickle 'weakref.ReferenceType'").

One deployment for the whole module (start-up is the expensive part). Versions are registered as the tests go;
the order of the tests matters for which version is the champion, so each test states what it expects.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bertops.serving.client import notify_reload, predict

from .conftest import Registry, Service, start_service

pytestmark = [pytest.mark.slow]

LIMITS = {"max_texts_per_request": 8, "max_text_bytes": 1000, "max_body_bytes": 20_000}


@pytest.fixture(scope="module")
def service(ray_address: str, registry: Registry) -> Iterator[Service]:
    # v1 sleeps a little per model call, so that concurrent requests queue up and batches form.
    v1 = registry.register_keyword(bias=0.0, sleep_s=0.02)
    registry.set_alias(v1)
    yield from start_service(
        ray_address, registry, poll_interval_s=1.0, max_batch_size=4, batch_wait_timeout_s=0.05, **LIMITS
    )


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (optionally only those whose labels contain ``labels``) at /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


# ------------------------------------------------------------------------------------------- endpoints
def test_predict_answers_every_text_with_label_and_probabilities(service: Service) -> None:
    texts = ["a good and moving film", "dull, boring and far too long", "dull " * 190, ""]
    answer = predict(service.url, texts, request_id="req-predict-1")
    assert answer["model"] == service.registry.name
    assert answer["version"] == "1"
    preds = answer["predictions"]
    assert [p["label"] for p in preds[:3]] == ["positive", "negative", "negative"]
    for p in preds:
        assert set(p["probabilities"]) == {"negative", "positive"}
        assert p["probability"] == pytest.approx(p["probabilities"][p["label"]])
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)


def test_request_with_more_texts_than_a_batch_is_answered_whole(service: Service) -> None:
    texts = [f"good film number {i}" for i in range(7)]  # 7 > max_batch_size 4: one model call of its own
    answer = predict(service.url, texts)
    assert len(answer["predictions"]) == 7


def test_request_id_is_echoed_and_generated(service: Service) -> None:
    r = httpx.post(f"{service.url}/predict", json={"texts": ["fine"]}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    r = httpx.post(f"{service.url}/predict", json={"texts": ["fine"]})
    assert r.headers.get("x-request-id")


def test_health_ready_metadata_docs(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    meta = httpx.get(f"{service.url}/metadata").json()
    assert meta["ready"] is True
    assert meta["model"]["model"] == service.registry.name
    assert meta["model"]["labels"] == ["negative", "positive"]
    assert meta["model"]["loaded_at"] and "data_version" in meta["model"]
    assert httpx.get(f"{service.url}/docs").status_code == 200
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert {"/predict", "/healthz", "/readyz", "/metadata", "/metrics", "/admin/reload"} <= set(spec["paths"])
    body_schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "texts" in body_schema["properties"]


def test_metrics_count_requests_and_show_the_version(service: Service) -> None:
    before = metric(service.url, "bertops_serving_requests_total", 'route="/predict",status="200"')
    predict(service.url, ["good"])
    after = metric(service.url, "bertops_serving_requests_total", 'route="/predict",status="200"')
    assert after == before + 1
    assert metric(service.url, "bertops_serving_request_latency_seconds_count", 'route="/predict"') >= 1
    assert metric(service.url, "bertops_serving_model_info", f'model="{service.registry.name}",version="1"') == 1


def test_logs_are_json_with_the_request_id(service: Service) -> None:
    import ray

    predict(service.url, ["good"], request_id="log-probe-42")
    # Replicas run on this machine: their logs are in the Ray session's log directory.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for path in logs.glob("replica_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "log-probe-42" in line and '"predict"' in line:
                    record = json.loads(line)
                    assert record["request_id"] == "log-probe-42"
                    assert record["model_version"] == "1" and record["texts"] == 1
                    return
        time.sleep(1)
    pytest.fail(f"no JSON log line with the request id in {logs}")


# ------------------------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ("malformed-json", b'{"texts": [', 400, "malformed JSON"),
    ("empty-body", b"", 400, "empty request body"),
    ("not-utf8", b'{"texts": ["\xff\xfe"]}', 400, "not UTF-8"),
    ("not-an-object", b'["a"]', 422, "JSON object"),
    ("missing-field", b'{"text": ["a"]}', 422, "unknown field"),
    ("no-texts", b"{}", 422, "missing field 'texts'"),
    ("wrong-type", b'{"texts": "just one"}', 422, "must be a list of strings, got string"),
    ("empty-list", b'{"texts": []}', 422, "empty list"),
    ("non-string-item", b'{"texts": ["ok", 3]}', 422, "texts[1]: expected a string, got number"),
    ("null-item", b'{"texts": [null]}', 422, "texts[0]: expected a string, got null"),
    ("too-many-texts", json.dumps({"texts": ["a"] * 9}).encode(), 413, "limit is 8"),
    ("text-too-long", json.dumps({"texts": ["é" * 600]}).encode(), 413, "texts[0] is 1200 UTF-8 bytes"),
    ("body-too-large", json.dumps({"texts": ["a"], "pad": "x" * 30_000}).encode(), 413, "limit is 20000"),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000, 400, "nested more than 32 levels"),
    ("deep-nesting-in-texts", b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested more than"),
]
# (id, body, content type, status, message): a body that is not declared as JSON is a 415.
BAD_CONTENT_TYPES = [
    ("text-plain", b'{"texts": ["good"]}', "text/plain", 415, "content type 'text/plain' is not supported"),
    ("form", b"texts=good", "application/x-www-form-urlencoded", 415, "is not supported"),
    ("latin-1", b'{"texts": ["good"]}', "application/json; charset=latin-1", 415, "charset"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_a_4xx_with_a_message(service: Service, body: bytes, status: int, message: str) -> None:
    r = httpx.post(f"{service.url}/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.get(f"{service.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [b[1:] for b in BAD_CONTENT_TYPES],
    ids=[b[0] for b in BAD_CONTENT_TYPES],
)
def test_a_body_not_declared_as_json_is_a_415(
    service: Service, body: bytes, content_type: str, status: int, message: str
) -> None:
    r = httpx.post(f"{service.url}/predict", content=body, headers={"Content-Type": content_type})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_bad_inputs_left_the_service_healthy_and_were_counted(service: Service) -> None:
    assert metric(service.url, "bertops_serving_errors_total", 'reason="bad_request"') >= 11
    assert metric(service.url, "bertops_serving_errors_total", 'reason="too_large"') >= 3
    assert metric(service.url, "bertops_serving_errors_total", 'reason="unsupported_media_type"') >= 3
    assert metric(service.url, "bertops_serving_requests_total", 'status="5') == 0
    assert predict(service.url, ["good"])["predictions"][0]["label"] == "positive"


def test_every_bad_input_mixed_with_good_requests_fails_no_good_one(service: Service) -> None:
    """Every bad-input class, many times over, concurrently with a stream of good requests: each bad one gets
    its 4xx, every good one a 200, and the service ends healthy with no 5xx answered."""
    bad = [(b[1], "application/json", b[2]) for b in BAD_INPUTS] + [
        (b[1], b[2], b[3]) for b in BAD_CONTENT_TYPES
    ]
    fives_before = metric(service.url, "bertops_serving_requests_total", 'status="5')

    async def run() -> tuple[list[int], list[tuple[int, int]]]:
        good: list[int] = []
        wrong: list[tuple[int, int]] = []
        done = asyncio.Event()
        async with httpx.AsyncClient(timeout=60) as client:

            async def good_worker() -> None:
                while not done.is_set():
                    r = await client.post(f"{service.url}/predict", json={"texts": ["a good film", "dull"]})
                    good.append(r.status_code)

            async def bad_worker(offset: int) -> None:
                for i in range(offset, offset + 5 * len(bad)):
                    body, content_type, status = bad[i % len(bad)]
                    r = await client.post(f"{service.url}/predict", content=body,
                                          headers={"Content-Type": content_type})  # fmt: skip
                    if r.status_code != status:
                        wrong.append((status, r.status_code))

            goods = [asyncio.create_task(good_worker()) for _ in range(3)]
            await asyncio.gather(*(bad_worker(k) for k in range(3)))
            done.set()
            await asyncio.gather(*goods)
        return good, wrong

    good, wrong = asyncio.run(run())
    assert not wrong, wrong[:5]
    assert good and set(good) == {200}, [s for s in good if s != 200][:5]
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert metric(service.url, "bertops_serving_requests_total", 'status="5') == fives_before == 0


def _non_loopback_address() -> str | None:
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return None


def test_reload_is_refused_to_non_loopback_callers(service: Service, monkeypatch) -> None:
    """A real caller whose address is not loopback: the client binds this machine's non-loopback address and
    connects to the service (on 127.0.0.1), so the peer Serve's proxy sees and passes on is that address."""
    r = httpx.post(f"{service.url}/admin/reload")
    assert r.status_code == 200 and r.json()["version"] == "1"  # loopback: allowed
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60) as remote:
        r = remote.post(f"{service.url}/admin/reload")
        assert r.status_code == 403 and f"not from {address}" in r.json()["error"], r.text
        # The prediction routes are not restricted: the same caller is answered.
        assert remote.post(f"{service.url}/predict", json={"texts": ["good"]}).status_code == 200


# -------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched(service: Service) -> None:
    batches_before = metric(service.url, "bertops_serving_batch_requests_count")
    requests_before = metric(service.url, "bertops_serving_batch_requests_sum")

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [client.post(f"{service.url}/predict", json={"texts": [f"good {i}"]}) for i in range(48)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(fire()) == [200] * 48
    batches = metric(service.url, "bertops_serving_batch_requests_count") - batches_before
    merged = metric(service.url, "bertops_serving_batch_requests_sum") - requests_before
    assert merged == 48
    assert batches < 48, "every request ran alone: no batching"
    # The largest batch seen holds more than one request.
    assert metric(service.url, "bertops_serving_batch_requests_bucket", 'le="1.0"') < metric(
        service.url, "bertops_serving_batch_requests_count"
    )


# ------------------------------------------------------------------------------- following promotion
async def _stream(
    url: str, stop: asyncio.Event, seen: list[tuple[int, str | None]], workers: int = 4
) -> None:
    """Send requests without pause from ``workers`` clients until ``stop``; record (status, version)."""

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            r = await client.post(f"{url}/predict", json={"texts": ["a good film", "dull"]})
            seen.append((r.status_code, r.json().get("version") if r.status_code == 200 else r.text))

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))


def _switch_under_load(service: Service, action, until_version: str, timeout: float = 60) -> list:
    async def run() -> list[tuple[int, str | None]]:
        seen: list[tuple[int, str | None]] = []
        stop = asyncio.Event()
        streaming = asyncio.create_task(_stream(service.url, stop, seen))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(action)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(v == until_version for _, v in seen[-4:]):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await streaming
        return seen

    return asyncio.run(run())


def test_alias_move_is_followed_by_polling_without_failing_a_request(service: Service) -> None:
    reg = service.registry
    v2 = reg.register_keyword(bias=3.0)
    seen = _switch_under_load(service, lambda: reg.set_alias(v2), until_version=v2)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == v2
    first_new = versions.index(v2)
    assert set(versions[first_new:]) == {v2}, "served the old version again after the switch"
    assert len(seen) > 20
    served = f'model="{reg.name}",version='
    assert metric(service.url, "bertops_serving_model_info", f'{served}"{v2}"') == 1
    assert metric(service.url, "bertops_serving_model_info", f'{served}"1"') == 0


@pytest.mark.parametrize(("broken", "why"), [("load", "broken on purpose"), ("output", "not a distribution")])
def test_a_broken_new_version_is_not_switched_to(service: Service, broken: str, why: str) -> None:
    reg = service.registry
    serving = predict(service.url, ["good"])["version"]
    bad = reg.register_keyword(broken=broken)
    failed_before = metric(
        service.url, "bertops_serving_model_switches_total", f'model="{reg.name}",outcome="failed"'
    )
    reg.set_alias(bad)
    try:
        result = notify_reload(
            service.url
        )  # the push path; the poller also tries (and remembers the failure)
        assert result["switched"] is False and result["version"] == serving
        assert why in result["message"]
        labels = f'model="{reg.name}",outcome='
        failed_after_push = metric(service.url, "bertops_serving_model_switches_total", labels + '"failed"')
        # The push tried it (and perhaps a poll before it): at least one failed attempt was counted.
        assert failed_after_push - failed_before >= 1
        # Then wait for two polls that pass over the failed version (each counted as "skipped")...
        skipped = metric(service.url, "bertops_serving_model_switches_total", labels + '"skipped"')
        deadline = time.monotonic() + 60
        while metric(service.url, "bertops_serving_model_switches_total", labels + '"skipped"') < skipped + 2:
            assert time.monotonic() < deadline, "the poller did not look at the alias again"
            time.sleep(0.2)
        # ...and none of them tried to load it again: no retry storm, still the old version.
        assert (
            metric(service.url, "bertops_serving_model_switches_total", labels + '"failed"')
            == failed_after_push
        )
        assert predict(service.url, ["good"])["version"] == serving
        meta = httpx.get(f"{service.url}/metadata").json()
        assert meta["model"]["version"] == serving and why in meta["last_reload_error"]
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    finally:
        reg.set_alias(serving)


def test_push_reload_switches_immediately(service: Service) -> None:
    reg = service.registry
    new = reg.register_keyword(bias=-3.0)
    seen = _switch_under_load(
        service, lambda: (reg.set_alias(new), notify_reload(service.url)), until_version=new, timeout=30
    )
    assert all(status == 200 for status, _ in seen)
    assert seen[-1][1] == new
    assert predict(service.url, ["fine"])["predictions"][0]["label"] == "negative"  # bias -3 outweighs "fine"


# ------------------------------------------------------------------------------ bertops' own model pyfunc
def test_switch_to_a_real_bertops_classifier(service: Service, tmp_path: Path) -> None:
    """The pyfunc the pipeline registers (Keras BERT + tokenizer inside) is served through the same path."""
    reg = service.registry
    real = reg.register_bertops_classifier(tmp_path)
    reg.set_alias(real)
    result = notify_reload(service.url)
    assert result["version"] == real, result
    long_text = (
        "a good film " * 80
    )  # 960 bytes (under the 1000-byte limit), far over the bundle's max_seq_length 32: truncated by the model
    answer = predict(service.url, ["a good film", "dull and long", long_text, ""])
    assert answer["version"] == real
    for p in answer["predictions"]:
        assert p["label"] in ("negative", "positive")
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    meta = httpx.get(f"{service.url}/metadata").json()["model"]
    assert meta["version"] == real and meta["labels"] == ["negative", "positive"]
    assert meta["data_version"] == "test-data-v1"


# ------------------------------------------------------------------------------------- a crashed replica
def test_a_killed_replica_loses_no_request(service: Service, ray_address: str) -> None:
    """SIGKILL the replica while 8 clients send requests through bertops' client: the in-flight ones come back
    as 5xx and are sent again, later ones wait for the replacement; every request is answered. Last in the
    module: the replacement loads whatever the alias points at."""
    import concurrent.futures
    import os
    import signal
    import threading

    from ray.util.state import list_actors

    def replica_pids() -> set[int]:
        alive = list_actors(address=ray_address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
        return {
            a.pid
            for a in alive
            if a.class_name.startswith("ServeReplica:") and "BertopsService" in a.class_name
        }

    before = replica_pids()
    assert len(before) == 1, before
    answered: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            version = predict(service.url, [f"a good film {i}"], timeout=60, retry_for_s=300)["version"]
        except Exception as exc:  # counted, not raised: the test reports every failure
            with lock:
                failed.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            answered.append(version)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(400)]
        while len(answered) < 40:  # under load: the first answers are in
            assert not failed, failed[:3]
            time.sleep(0.05)
        os.kill(next(iter(before)), signal.SIGKILL)
        concurrent.futures.wait(futures)
    assert not failed, failed[:5]
    assert len(answered) == 400
    after = replica_pids()
    assert after and not (after & before), "the replica was not replaced"
