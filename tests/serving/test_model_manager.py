"""The switching rules of ModelManager, with an in-memory alias and loader (the real MLflow path is covered by
test_deployed_service.py): switch only to a loaded version, keep the old one on failure, remember failures, retry on force."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bertops.serving.model_store import LoadedModel, ModelLoadError, ModelManager, ModelSource


@dataclass
class MemoryRegistry:
    """Where the alias points, and which versions fail to load."""

    alias: str | None = "1"
    broken: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)

    def source(self) -> ModelSource:
        registry = self

        class Source(ModelSource):
            def resolve(self) -> str:
                if registry.alias is None:
                    raise ModelLoadError("alias points nowhere")
                return registry.alias

        return Source(tracking_uri="memory://", name="m")

    def load(self, source: ModelSource, version: str) -> LoadedModel:
        self.loads.append(version)
        if version in self.broken:
            raise ModelLoadError(f"version {version} is broken")
        return LoadedModel(name="m", version=version, alias="champion", pyfunc=None, labels=["a", "b"])


def manager(reg: MemoryRegistry, events: list | None = None) -> ModelManager:
    events = [] if events is None else events
    return ModelManager(
        reg.source(),
        loader=reg.load,
        on_switch=lambda old, new: events.append(("switch", old and old.version, new.version)),
        on_failure=lambda version, error: events.append(("fail", version)),
    )


def test_first_load_then_switch_when_the_alias_moves() -> None:
    reg, events = MemoryRegistry(), []
    m = manager(reg, events)
    assert asyncio.run(m.refresh()).switched and m.current.version == "1"
    assert not asyncio.run(m.refresh()).switched  # nothing moved: no reload
    reg.alias = "2"
    result = asyncio.run(m.refresh())
    assert (result.switched, result.version, result.previous_version) == (True, "2", "1")
    assert events == [("switch", None, "1"), ("switch", "1", "2")]
    assert reg.loads == ["1", "2"]


def test_a_broken_version_keeps_the_old_one_and_is_not_retried_until_forced() -> None:
    reg, events = MemoryRegistry(), []
    m = manager(reg, events)
    asyncio.run(m.refresh())
    reg.alias, reg.broken = "2", {"2"}
    result = asyncio.run(m.refresh())
    assert not result.switched and result.version == "1" and "broken" in result.message
    assert m.current.version == "1" and "broken" in m.last_error
    asyncio.run(m.refresh())
    assert reg.loads == ["1", "2"]  # remembered: the poller does not reload it every interval
    reg.broken = set()
    assert asyncio.run(m.refresh(force=True)).switched  # a push retries it
    assert m.current.version == "2" and m.last_error is None
    assert events.count(("fail", "2")) == 1


def test_an_alias_that_points_nowhere_keeps_serving() -> None:
    reg = MemoryRegistry()
    m = manager(reg)
    asyncio.run(m.refresh())
    reg.alias = None
    result = asyncio.run(m.refresh())
    assert not result.switched and m.current.version == "1" and "points nowhere" in result.message


def test_no_model_at_start_then_the_first_champion_arrives() -> None:
    reg = MemoryRegistry(alias=None)
    m = manager(reg)
    assert not asyncio.run(m.refresh()).switched and m.current is None
    reg.alias = "5"
    assert asyncio.run(m.refresh()).switched and m.current.version == "5"


def test_concurrent_refreshes_load_once() -> None:
    reg = MemoryRegistry()
    m = manager(reg)

    async def both() -> None:
        await asyncio.gather(m.refresh(), m.refresh(), m.refresh())

    asyncio.run(both())
    assert reg.loads == ["1"]


def test_a_real_registry_without_the_alias_says_so_and_a_dead_one_does_not(tmp_path, monkeypatch) -> None:
    """Against a real MLflow store: a model not registered yet, and a registered one whose alias is on no
    version, are ``AliasUnset`` (the service's ``/readyz`` then says there is nothing to wait for); a registry
    that does not answer is a plain ModelLoadError (the service keeps waiting for it)."""
    from mlflow import MlflowClient

    from bertops.serving.model_store import AliasUnset

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    source = ModelSource(tracking_uri=uri, name="m")
    m = ModelManager(source, loader=MemoryRegistry().load)
    for step in ("unregistered", "registered, no alias"):
        try:
            source.resolve()
        except AliasUnset as exc:
            assert "models:/m@champion" in str(exc), exc
        else:
            raise AssertionError(f"{step}: resolved")
        assert not asyncio.run(m.refresh()).switched and m.alias_unset, step
        if step == "unregistered":
            MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("m")

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = ModelSource(tracking_uri="http://127.0.0.1:9", name="m")
    try:
        dead.resolve()
    except ModelLoadError as exc:
        assert not isinstance(exc, AliasUnset), exc
    else:
        raise AssertionError("a dead registry resolved")
    m = ModelManager(dead, loader=MemoryRegistry().load)
    assert not asyncio.run(m.refresh()).switched and not m.alias_unset and m.last_error


def test_waiting_for_readiness_stops_only_on_the_replicas_word(tmp_path) -> None:
    """``wait_ready(until_alias_unset=True)`` over real HTTP: a proxy's own ``503`` (HTML, before any replica
    answers) is waited through until the timeout; the replica's ``503`` with ``alias_unset`` ends the wait at
    once, with the replica's error."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bertops.serving.client import ServingClientError, wait_ready

    answer = {"type": "text/html", "body": b"<html>503 Service Unavailable</html>"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Type", answer["type"])
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        try:
            wait_ready(url, timeout=2, interval=0.2, until_alias_unset=True)
        except ServingClientError as exc:
            assert "not ready after 2" in str(exc) and time.monotonic() - started >= 2, exc
        else:
            raise AssertionError("an HTML 503 was taken as ready")
        answer.update(
            type="application/json", body=b'{"ready": false, "error": "no champion", "alias_unset": true}'
        )
        started = time.monotonic()
        try:
            wait_ready(url, timeout=30, interval=0.2, until_alias_unset=True)
        except ServingClientError as exc:
            assert "no champion" in str(exc) and time.monotonic() - started < 10, exc
        else:
            raise AssertionError("alias_unset was taken as ready")
    finally:
        server.shutdown()
