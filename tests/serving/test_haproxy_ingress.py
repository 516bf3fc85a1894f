"""``serving.ingress: haproxy`` for real: a Ray head started with the switches bertops gives its own Rays
(:func:`bertops.serving.ingress.ray_process_env`), Ray's HAProxy in front, requests going straight to the
replica's own HTTP server. The same app and checks as the proxy path, through HAProxy: answers, bad input as a
4xx, a push reload to a new version under a request stream with no failed request, a replica killed under load
with no request lost for a client that does not retry; and what listens where.

This file sorts before test_http_api.py on purpose (see test_deployed_service.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.conftest import start_ray_node, stop_group

from bertops.config import ServingConfig
from bertops.serving.client import notify_reload, predict
from bertops.serving.ingress import HAPROXY_SWITCHES, ray_process_env

from .conftest import Registry, Service, free_port, start_service
from .test_deployed_service import BAD_INPUTS, LIMITS, _switch_under_load

pytestmark = [pytest.mark.slow]
ENV: dict[str, str] = {}  # the Ray head's ingress environment (listener ports), filled by the fixture
HEAD: dict[str, int] = {}  # the Ray head's process id ("pid"), filled by the fixture


@pytest.fixture(scope="module")
def service(registry: Registry) -> Iterator[Service]:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray_ha_", dir="/tmp"))
    env = ray_process_env(ServingConfig(ingress="haproxy"))
    # HAProxy's access log to its stdout file beside its config (Ray's default is syslog on 127.0.0.1:514,
    # which nothing here reads), for a failing test to show.
    env["RAY_SERVE_HAPROXY_LOG_TARGET"] = "stdout"
    ENV.update(env)
    gcs = free_port()
    args = [
        "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--include-dashboard", "false",
        "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--num-cpus", "2",
        "--object-store-memory", str(200 * 1024**2), "--temp-dir", str(temp_dir), "--disable-usage-stats",
    ]  # fmt: skip
    head = start_ray_node(args, temp_dir, "head", env=env)
    HEAD["pid"] = head.pid
    v1 = registry.register_keyword(bias=0.0)
    registry.set_alias(v1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in HAPROXY_SWITCHES.items():  # the deploying driver knows the switches are on
                mp.setenv(key, value)
            yield from start_service(
                f"127.0.0.1:{gcs}", registry, ingress="haproxy", poll_interval_s=60.0, **LIMITS
            )
    finally:
        stop_group(head, timeout=60)


def _listener(port: int) -> tuple[str, str]:
    """(bound address, process name) of the TCP listener on ``port``."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.laddr.ip, psutil.Process(conn.pid).name() if conn.pid else "?"
    raise AssertionError(f"nothing listens on port {port}")


def test_haproxy_fronts_the_service_on_loopback_and_replicas_listen_on_loopback(service: Service) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    assert _listener(port) == ("127.0.0.1", "haproxy")
    replica_ports = [
        c.laddr for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port < 31000 and c.pid
        and "ServeReplica" in " ".join(psutil.Process(c.pid).cmdline())
    ]  # fmt: skip
    assert replica_ports and all(addr.ip == "127.0.0.1" for addr in replica_ports), replica_ports


def test_haproxy_stats_and_metrics_listen_on_loopback_only(service: Service) -> None:
    # Ray's template says `bind *:` for both; bertops' HAProxy launcher rebinds them (serving.haproxy_admin_host).
    for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        assert _listener(int(ENV[key])) == ("127.0.0.1", "haproxy"), key
    metrics = httpx.get(f"http://127.0.0.1:{ENV['RAY_SERVE_HAPROXY_METRICS_PORT']}/metrics", timeout=30)
    assert metrics.status_code == 200 and "haproxy_" in metrics.text


def test_predict_and_metadata_through_haproxy(service: Service) -> None:
    answer = predict(service.url, ["a good and moving film", "dull, boring and far too long"])
    assert answer["version"] == "1"
    assert [p["label"] for p in answer["predictions"]] == ["positive", "negative"]
    meta = httpx.get(f"{service.url}/metadata", timeout=30).json()
    assert meta["model"]["version"] == "1" and meta["model"]["labels"] == ["negative", "positive"]
    assert httpx.get(f"{service.url}/readyz", timeout=30).status_code == 200
    r = httpx.post(f"{service.url}/predict", json={"texts": ["fine"]}, headers={"X-Request-ID": "ha-42"})
    assert r.status_code == 200 and r.headers.get("x-request-id") == "ha-42"


@pytest.mark.parametrize(
    ("body", "status", "message"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_a_4xx_through_haproxy(service: Service, body: bytes, status: int, message: str) -> None:
    r = httpx.post(f"{service.url}/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text
    assert httpx.get(f"{service.url}/readyz", timeout=30).status_code == 200


def test_push_reload_switches_without_failing_a_request(service: Service) -> None:
    reg = service.registry
    v2 = reg.register_keyword(bias=0.0)
    seen = _switch_under_load(
        service, lambda: (reg.set_alias(v2), notify_reload(service.url)), until_version=v2
    )
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:5]
    assert {v for _, v in seen} == {"1", v2}


def _replica_pids() -> set[int]:
    """Process ids of this module's Ray head's BertopsService replicas (descendants of the head)."""
    pids = set()
    for proc in psutil.Process(HEAD["pid"]).children(recursive=True):
        try:
            if "ServeReplica" in (title := " ".join(proc.cmdline())) and "BertopsService" in title:
                pids.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def test_a_killed_replica_loses_no_request_of_a_client_that_does_not_retry(service: Service) -> None:
    """8 plain httpx clients (no retries of their own) send requests; the lone replica is SIGKILLed once the
    first are answered, with requests in flight. HAProxy sends those again (``retry-on``, redispatch, whole
    requests kept) and the later ones go to Ray's backup server, the head's Serve proxy, which holds them until
    the replacement answers: each request is answered 200, or 503 with ``Retry-After`` where HAProxy gave up
    (counted). Never a 500, never a dropped connection. Last in the module: it replaces the replica."""
    before = _replica_pids()
    assert len(before) == 1, before
    per_client, seen = (
        12,
        [],
    )  # (status or transport error, Retry-After, sent, answered: s after the kill, body)
    answered, killed_at = asyncio.Event(), [float("inf")]

    async def client(http: httpx.AsyncClient, k: int) -> None:
        for i in range(per_client):
            sent = time.monotonic()
            try:
                r = await http.post(f"{service.url}/predict", json={"texts": [f"a good film {k}-{i}"]})
                status, retry_after, body = r.status_code, r.headers.get("retry-after"), r.text[:160]
            except httpx.TransportError as exc:  # counted, not raised: the test reports every failure
                status, retry_after, body = type(exc).__name__, None, str(exc)
            seen.append((status, retry_after, sent - killed_at[0], time.monotonic() - killed_at[0], body))
            if len(seen) >= 8:
                answered.set()

    async def run() -> None:
        # Replacing the replica takes a while on a busy machine: a waiting request must not time out first.
        async with httpx.AsyncClient(timeout=600, transport=httpx.AsyncHTTPTransport(retries=0)) as http:
            clients = [asyncio.create_task(client(http, k)) for k in range(8)]
            await answered.wait()
            os.kill(next(iter(before)), signal.SIGKILL)
            killed_at[0] = time.monotonic()
            await asyncio.gather(*clients)

    asyncio.run(run())
    assert len(seen) == 8 * per_client
    in_flight = [s for s in seen if s[2] < 0 < s[3]]  # sent before the kill, answered after it
    assert in_flight, "no request was in flight when the replica was killed: the test tested nothing"
    unavailable = [s for s in seen if s[0] == 503]
    wrong = [s for s in seen if s[0] != 200 and not (s[0] == 503 and s[1] and int(s[1]) > 0)]
    if wrong:  # what HAProxy saw (its access log: the fixture's RAY_SERVE_HAPROXY_LOG_TARGET) and ran
        state = Path(ENV["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        logs = "".join(p.read_text(errors="replace")[-4000:] for p in sorted(state.rglob("*.stdout.log")))
        configs = sorted(state.rglob("haproxy.cfg.bertops"))
        pytest.fail(
            f"{len(wrong)} of {len(seen)} requests not answered 200 or 503 + Retry-After: {wrong[:5]}\n"
            f"HAProxy's log:\n{logs}\nits config:\n{configs[-1].read_text() if configs else 'none'}"
        )
    print(f"{len(seen) - len(unavailable)} answered 200, {len(unavailable)} 503 + Retry-After, "
          f"{len(in_flight)} in flight at the kill")  # fmt: skip
    deadline = time.monotonic() + 300
    while not (after := _replica_pids()) or after & before:
        assert time.monotonic() < deadline, "the replica was not replaced"
        time.sleep(1)
    assert predict(service.url, ["a good film"])["predictions"][0]["label"] == "positive"
