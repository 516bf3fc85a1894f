"""Shadow and canary for real: a candidate version beside the champion on Ray Serve (the session's Ray head),
versions from the real MLflow server, live traffic over HTTP, the retrain's live-trial step
(``bertops.orchestration.tasks.live_trial``, what ``promotion_gate`` calls) driving the service's admin routes.

Candidates are keyword pyfuncs (keyword_model.py): ``bias`` makes one disagree with the champion, ``fail_word``
one that loads and warms up but errors on live traffic, ``broken`` ones that fail to load or to warm up.
Latency limits are set out of reach: timing figures are the benchmark's (benchmarks/shadow_latency.py).

One deployment for the module; the last test makes its candidate the champion. Named to sort before
test_http_api.py (see test_deployed_service.py for why).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bertops.config import load_config
from bertops.orchestration import tasks
from bertops.registry import live as registry_live
from bertops.serving import live_client as live
from bertops.serving.client import ServingClientError, notify_reload

from .conftest import Registry, Service, start_service
from .request_stream import RequestStream

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["a good film", "a dull film", "the film", "good and moving", "long and bad", "it is a film"]


@pytest.fixture(scope="module")
def service(ray_address: str, registry: Registry) -> Iterator[Service]:
    registry.set_alias(registry.register_keyword(bias=0.0, sleep_s=0.002))
    yield from start_service(ray_address, registry, poll_interval_s=1.0, max_batch_size=8)


def _cfg(service: Service, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    monkeypatch.setenv("BERTOPS_SERVING_URL", service.url)
    return load_config(
        REPO / "params.yaml",
        [f"tracking.uri={service.registry.tracking_uri}", f"registry.model_name={service.registry.name}",
         "promotion.shadow.max_p99_ratio=1000", "promotion.shadow.duration_s=120",
         "promotion.canary.max_p99_ratio=1000", *overrides],
    )  # fmt: skip


def _stream(url: str, fail_word_every: int | None = None) -> RequestStream:
    """40 callers in 3 threads, cycling through TEXTS."""
    return RequestStream(url, lambda i: TEXTS[i % len(TEXTS)], fail_word_every=fail_word_every)


def test_a_candidate_that_fails_to_load_or_warm_up_gets_no_traffic(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = service.registry.name
    for config, why in (
        ({"broken": "load"}, "broken on purpose"),
        ({"broken": "output"}, "not a distribution"),
    ):
        version = service.registry.register_keyword(**config)
        with pytest.raises(ServingClientError) as err:
            live.start_shadow(service.url, name, version)
        assert err.value.status == 422 and why in str(err.value) and "gets no traffic" in str(err.value)
        assert live.candidate(service.url, name)["phase"] == "none"
    # The retrain's step: refused, with the service's reason on the version.
    out = tasks.live_trial(_cfg(service, monkeypatch, "promotion.shadow.enabled=true"), name, version)
    assert not out["passed"] and "not a distribution" in out["reason"], out
    tags = service.registry.client().get_model_version(name, version).tags
    assert (
        tags[registry_live.TAG_SHADOW] == "failed"
        and "not a distribution" in tags[registry_live.TAG_SHADOW_REASON]
    )
    with pytest.raises(ServingClientError) as err:
        live.set_canary(service.url, name, 50)
    assert err.value.status == 409
    with _stream(service.url) as stream:
        time.sleep(1)
    assert stream.failures == [] and {v for _, v in stream.answers} == {"1"}


def test_a_candidate_that_disagrees_often_is_refused_with_its_figures(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bias -3: every text without two positive words is "negative" (the champion says positive to most).
    version = service.registry.register_keyword(bias=-3.0)
    cfg = _cfg(service, monkeypatch, "promotion.shadow.enabled=true", "promotion.shadow.requests=15",
               "promotion.shadow.min_agreement=0.9")  # fmt: skip
    with _stream(service.url) as stream:
        out = tasks.live_trial(cfg, service.registry.name, version, poll_s=0.5)
    assert stream.failures == []
    assert {v for _, v in stream.answers} == {"1"}  # shadow answers never reach a client
    assert not out["passed"] and "agreement with the champion" in out["reason"], out
    report = out["shadow"]["report"]
    assert report["compared"] >= 15 and report["agreement"] < 0.9 and report["errors"] == 0
    mv = service.registry.client().get_model_version(service.registry.name, version)
    assert mv.tags[registry_live.TAG_SHADOW] == "failed"
    assert f"{report['agreement']:.4f}" in mv.tags[registry_live.TAG_SHADOW_REASON]
    assert mv.tags[registry_live.TAG_SHADOW_RUN] == out["shadow_run_id"]
    assert registry_live.CARD_SECTION in mv.description and "**Result: failed**" in mv.description
    assert live.candidate(service.url, service.registry.name)["phase"] == "ended"
    metrics = httpx.get(f"{service.url}/metrics").text
    assert (
        f'bertops_serving_shadow_requests_total{{model="{service.registry.name}",outcome="compared"}}'
        in metrics
    )


def test_a_canary_whose_candidate_errors_is_rolled_back_automatically(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = service.registry.register_keyword(bias=0.1, fail_word="boom")
    cfg = _cfg(service, monkeypatch, "promotion.canary.enabled=true", "promotion.canary.percent=50",
               "promotion.canary.steps=[]", "promotion.canary.step_requests=30",
               "promotion.canary.max_error_rate=0.05")  # fmt: skip
    with _stream(service.url, fail_word_every=7) as stream:
        out = tasks.live_trial(cfg, service.registry.name, version, poll_s=0.5)
        rolled_back_at = len(stream.answers)
        time.sleep(1)
    assert stream.failures == []  # a candidate error is answered by the champion
    assert not out["passed"] and "rolled back at 50" in out["reason"] and "error rate" in out["reason"], out
    assert version in {v for _, v in stream.answers[:rolled_back_at]}  # it did answer some callers first
    assert {v for _, v in stream.answers[rolled_back_at:]} == {"1"}
    state = live.candidate(service.url, service.registry.name)
    assert state["phase"] == "ended" and "error rate" in state["ended"]
    tags = service.registry.client().get_model_version(service.registry.name, version).tags
    assert (
        tags[registry_live.TAG_CANARY] == "failed" and "error rate" in tags[registry_live.TAG_CANARY_REASON]
    )
    metrics = httpx.get(f"{service.url}/metrics").text
    assert f'bertops_serving_canary_rollbacks_total{{model="{service.registry.name}"}} 1.0' in metrics


def test_with_require_approval_the_reviewer_sees_the_shadow_report_before_any_canary_answer(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``promotion.mode=require_approval``: the shadow report is on the version (tags, model card) while the
    trial waits for the reviewer's approval tag, and no client gets a candidate answer before it is set."""
    from bertops.registry import registry as reg

    name = service.registry.name
    version = service.registry.register_keyword(bias=0.1)
    cfg = _cfg(service, monkeypatch, "promotion.mode=require_approval", "promotion.approval_timeout_s=120",
               "promotion.shadow.enabled=true", "promotion.shadow.requests=10", "promotion.canary.enabled=true",
               "promotion.canary.percent=50", "promotion.canary.steps=[]", "promotion.canary.step_requests=5")  # fmt: skip
    out: dict = {}
    client = service.registry.client()
    with _stream(service.url) as stream:
        trial = threading.Thread(
            target=lambda: out.update(tasks.live_trial(cfg, name, version, wait_for_review=True, poll_s=0.5))
        )
        trial.start()
        deadline = time.monotonic() + 120
        # what the reviewer sees next to the approval tag: the shadow's tags and its model-card section
        while registry_live.CARD_SECTION not in (
            (mv := client.get_model_version(name, version)).description or ""
        ):
            assert time.monotonic() < deadline and trial.is_alive(), out
            time.sleep(0.5)
        assert mv.tags[registry_live.TAG_SHADOW] == "passed", mv.tags
        time.sleep(2)
        assert trial.is_alive() and version not in {v for _, v in stream.answers}  # waiting: no canary yet
        client.set_model_version_tag(name, version, reg.TAG_APPROVAL, "approved")
        trial.join(timeout=180)
        assert not trial.is_alive()
    assert out["passed"], out
    assert version in {v for _, v in stream.answers}  # after the approval, the canary answered some callers
    assert stream.failures == []
    tasks.drop_candidate(cfg, name)  # the alias stays; the next test starts from the champion alone
    assert live.candidate(service.url, name)["phase"] == "ended"


def test_a_good_candidate_goes_shadow_canary_champion_with_no_failed_request(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = service.registry.name
    version = service.registry.register_keyword(bias=0.1)  # answers as the champion does
    cfg = _cfg(service, monkeypatch, "promotion.shadow.enabled=true", "promotion.shadow.requests=15",
               "promotion.canary.enabled=true", "promotion.canary.percent=25", "promotion.canary.steps=[60]",
               "promotion.canary.step_requests=5")  # fmt: skip
    with _stream(service.url) as stream:
        out = tasks.live_trial(cfg, name, version, poll_s=0.5)
        assert out["passed"], out
        assert [s["percent"] for s in out["canary"]] == [25, 60]
        service.registry.set_alias(version)  # what promote() does; then update_serving's reload
        reload = notify_reload(service.url, model=name)
        assert reload["version"] == version  # by this call, or by the poller a moment before
        time.sleep(1)
    assert stream.failures == []
    mv = service.registry.client().get_model_version(name, version)
    assert mv.tags[registry_live.TAG_SHADOW] == "passed" and mv.tags[registry_live.TAG_CANARY] == "passed"
    seen: dict[str, list[str]] = {}
    for caller, v in stream.answers:
        if not seen.setdefault(caller, [v]) or seen[caller][-1] != v:
            seen[caller].append(v)
    # A caller moves from the champion to the candidate at most once: the share only widens.
    assert all(path in (["1"], [version], ["1", version]) for path in seen.values()), seen
    assert stream.answers[-1][1] == version
    assert httpx.get(f"{service.url}/metadata").json()["model"]["version"] == version
    state = live.candidate(service.url, name)
    assert state["phase"] == "ended" and state["ended"].startswith("promoted"), state
