"""Judging a candidate on live traffic (bertops.registry.live): the shadow tally and its gate, canary routing by
a stable hash and the canary's limits; the shadow report logged to a real MLflow server against the version."""

from __future__ import annotations

import json
import random

import pytest
from tests.registry.helpers import make_model

from bertops.config import CanaryConfig, ShadowConfig
from bertops.registry import live
from bertops.registry import registry as reg
from bertops.registry.model_card import ModelCardInfo, render_model_card


def _tally(
    n: int, disagree_every: int | None, candidate_ms: float = 5.0, errors: int = 0
) -> live.ShadowTally:
    tally = live.ShadowTally()
    rng = random.Random(0)
    for i in range(n):
        champ = live.Answer("positive" if i % 2 else "negative", 0.9, 4.0 + rng.random())
        if i < errors:
            tally.add(champ, None)
            continue
        label = champ.label
        if disagree_every and i % disagree_every == 0:
            label = "negative" if champ.label == "positive" else "positive"
        tally.add(
            champ, live.Answer(label, 0.8, candidate_ms + rng.random()), label=champ.label if i < 60 else None
        )
    return tally


def test_a_candidate_that_agrees_passes_with_its_figures() -> None:
    report = _tally(300, disagree_every=50).report()
    assert report.requests == report.compared == 300 and report.errors == 0
    assert report.agreement == pytest.approx(1 - 6 / 300)
    assert report.confidence_shift == pytest.approx(-0.1)
    assert 1.0 < report.p99_ratio < 1.5
    assert report.feedback == 60 and report.champion_feedback_accuracy == 1.0
    decision = live.shadow_decision(report, ShadowConfig(requests=200), version="2")
    assert decision.passed, decision.reason
    assert {c.name for c in decision.checks} == {"shadow-requests", "shadow-errors", "shadow-agreement",
                                                 "shadow-latency", "shadow-feedback"}  # fmt: skip


def test_a_candidate_that_disagrees_often_is_refused_with_its_figures() -> None:
    report = _tally(300, disagree_every=3).report()
    decision = live.shadow_decision(report, ShadowConfig(requests=200, min_agreement=0.9))
    assert not decision.passed
    failed = {c.name: c for c in decision.failures}
    assert set(failed) == {"shadow-agreement", "shadow-feedback"}, decision.reason
    assert failed["shadow-agreement"].value == pytest.approx(report.agreement)
    assert f"{report.agreement:.4f}" in decision.reason


def test_errors_slowness_and_too_few_requests_each_refuse() -> None:
    assert not live.shadow_decision(_tally(300, None, errors=3).report(), ShadowConfig(requests=200)).passed
    slow = live.shadow_decision(_tally(300, None, candidate_ms=40.0).report(), ShadowConfig(requests=200))
    assert [c.name for c in slow.failures] == ["shadow-latency"]
    few = live.shadow_decision(_tally(50, None).report(), ShadowConfig(requests=200))
    assert [c.name for c in few.failures] == ["shadow-requests"] and "50 mirrored" in few.reason
    dropped = live.ShadowTally()
    dropped.drop(7)
    assert dropped.report().dropped == 7 and dropped.report().agreement is None


def test_canary_routing_is_stable_proportional_and_only_widens() -> None:
    keys = [f"client-{i}" for i in range(20_000)]
    assert all(live.canary_bucket(k) == live.canary_bucket(k) for k in keys[:100])
    for percent in (5, 25, 50):
        share = sum(live.routes_to_candidate(k, percent) for k in keys) / len(keys)
        assert abs(share - percent / 100) < 0.015, (percent, share)
    at5 = {k for k in keys if live.routes_to_candidate(k, 5)}
    at25 = {k for k in keys if live.routes_to_candidate(k, 25)}
    assert at5 <= at25  # a caller on the candidate stays there as the share widens
    assert live.canary_shares(CanaryConfig(percent=5, steps=[25, 50])) == [5, 25, 50]
    with pytest.raises(ValueError, match="widen"):
        CanaryConfig(percent=25, steps=[10])


def test_canary_verdicts() -> None:
    cfg = CanaryConfig(step_requests=100, max_error_rate=0.01, max_p99_ratio=1.5)
    assert live.canary_verdict(40, 0, 5.0, 4.0, cfg).action == "wait"
    assert live.canary_verdict(100, 1, 5.0, 4.0, cfg).action == "widen"
    errors = live.canary_verdict(30, 2, 5.0, 4.0, cfg)
    assert errors.action == "rollback" and "error rate 2/30" in errors.reason  # errors roll back at once
    assert live.canary_verdict(120, 0, 9.0, 4.0, cfg).action == "rollback"


def test_the_card_section_is_inserted_then_replaced() -> None:
    card = render_model_card(ModelCardInfo(name="m", version="2"))
    report = _tally(300, None).report()
    first = live.with_section(
        card, live.render_shadow_section(report, live.shadow_decision(report, ShadowConfig()))
    )
    assert first.index(live.CARD_SECTION) < first.index("## Limitations")
    bad = _tally(300, disagree_every=2).report()
    second = live.with_section(
        first, live.render_shadow_section(bad, live.shadow_decision(bad, ShadowConfig()))
    )
    assert second.count(live.CARD_SECTION) == 1 and "**Result: failed**" in second
    assert "**Result: passed**" not in second and second.endswith(card.split("## Limitations")[1])


def test_the_shadow_report_is_logged_to_the_version(mlflow_server) -> None:
    name, client = make_model(mlflow_server.uri, 2)
    client.update_model_version(
        name, "2", description=render_model_card(ModelCardInfo(name=name, version="2"))
    )
    report = _tally(250, disagree_every=4).report()
    decision = live.shadow_decision(report, ShadowConfig(requests=200, min_agreement=0.9))
    run_id = live.record_shadow(client, name, "2", report, decision)

    mv = reg.get_version(client, name, "2")
    assert mv.tags[live.TAG_SHADOW] == "failed" and mv.tags[live.TAG_SHADOW_RUN] == run_id
    assert "agreement with the champion" in mv.tags[live.TAG_SHADOW_REASON]
    assert live.CARD_SECTION in mv.description and "**Result: failed**" in mv.description
    run = client.get_run(run_id)
    assert run.data.metrics["shadow_agreement"] == pytest.approx(report.agreement)
    assert run.data.tags["bertops.model_version"] == "2"
    path = client.download_artifacts(run_id, "shadow_report.json")
    with open(path, encoding="utf-8") as fh:
        logged = json.load(fh)
    assert logged["decision"]["status"] == "failed" and logged["report"]["compared"] == 250
