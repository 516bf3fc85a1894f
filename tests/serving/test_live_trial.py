"""The candidate beside the champion (bertops.serving.live), in-process and fast: the shadow queue is bounded and
never waited for, mirrored answers go into the tally (feedback by request id too), a canary routes by the
caller's stable hash and rolls back by itself past its limits. The same paths run under real Ray Serve and MLflow
in test_deployed_shadow_canary.py."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bertops.config import CanaryConfig
from bertops.registry.live import routes_to_candidate
from bertops.serving.live import LiveMetrics, LiveTrial, request_answer
from bertops.serving.model_store import LoadedModel


def _loaded(version: str) -> LoadedModel:
    return LoadedModel(
        name="m", version=version, alias="champion", pyfunc=None, labels=["negative", "positive"]
    )


def _pred(label: str, p: float = 0.9) -> dict:
    other = "negative" if label == "positive" else "positive"
    return {"label": label, "probability": p, "probabilities": {label: p, other: 1 - p}}


def _trial(call, queue_size: int = 8) -> tuple[LiveTrial, CollectorRegistry]:
    registry = CollectorRegistry()
    return LiveTrial(_loaded("2"), queue_size, call, LiveMetrics(registry)), registry


def test_shadow_compares_mirrored_requests_and_scores_feedback() -> None:
    async def call(model, texts):  # the candidate says negative to everything
        return [_pred("negative", 0.7) for _ in texts]

    async def run() -> LiveTrial:
        trial, _ = _trial(call)
        trial.start_shadow(max_batch_texts=8)
        for i in range(6):
            label = "positive" if i % 2 else "negative"
            trial.mirror(f"r{i}", ["x", "y"], [_pred(label), _pred(label)], ms=4.0)
            await asyncio.sleep(0.01)
        await trial.stop_shadow()
        assert trial.feedback("r1", 0, "negative") and trial.feedback("r2", 1, "negative")
        assert not trial.feedback("r1", 0, "negative")  # counted once
        assert not trial.feedback("unknown", 0, "negative")
        return trial

    report = asyncio.run(run()).tally.report()
    assert report.requests == report.compared == 6 and report.errors == 0 and report.dropped == 0
    assert report.agreement == pytest.approx(0.5)
    assert report.confidence_shift == pytest.approx(0.7 - 0.9)
    assert report.feedback == 2
    assert report.candidate_feedback_accuracy == 1.0 and report.champion_feedback_accuracy == 0.5


def test_a_full_queue_drops_and_counts_and_never_blocks_the_request() -> None:
    async def run():
        gate = asyncio.Event()

        async def slow(model, texts):
            await gate.wait()
            return [_pred("positive") for _ in texts]

        trial, registry = _trial(slow, queue_size=2)
        trial.start_shadow(max_batch_texts=1)
        await asyncio.sleep(0.01)
        trial.mirror("r0", ["x"], [_pred("positive")], ms=1.0)
        await asyncio.sleep(0.01)  # the worker took it and waits on the candidate
        for i in range(1, 10):  # two wait in the queue; the rest are dropped at once
            trial.mirror(f"r{i}", ["x"], [_pred("positive")], ms=1.0)
        dropped_while_busy = trial.tally.dropped
        gate.set()
        await asyncio.sleep(0.05)
        await trial.stop_shadow()
        return trial, dropped_while_busy, registry

    trial, dropped, registry = asyncio.run(run())
    report = trial.tally.report()
    assert dropped == 7 and report.compared == 3 and report.dropped == 7
    assert (
        'bertops_serving_shadow_requests_total{model="m",outcome="dropped"} 7.0'
        in generate_latest(registry).decode()
    )


def test_a_failing_candidate_counts_errors_in_shadow() -> None:
    async def broken(model, texts):
        raise RuntimeError("boom")

    async def run():
        trial, _ = _trial(broken)
        trial.start_shadow(max_batch_texts=8)
        trial.mirror("r0", ["x"], [_pred("positive")], ms=1.0)
        await asyncio.sleep(0.02)
        await trial.stop_shadow()
        return trial.tally.report()

    report = asyncio.run(run())
    assert report.requests == 1 and report.errors == 1 and report.compared == 0


def test_canary_routes_by_caller_and_rolls_back_past_the_error_rate() -> None:
    calls = {"n": 0}

    async def flaky(model, texts):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("every other call fails")
        return [_pred("positive") for _ in texts]

    async def run():
        trial, registry = _trial(flaky)
        trial.set_canary(50, CanaryConfig(percent=100, steps=[], step_requests=10, max_error_rate=0.2))
        callers = [f"c{i}" for i in range(40)]
        routed = [c for c in callers if trial.routes(c)]
        assert routed == [c for c in callers if routes_to_candidate(c, 50)] and 0 < len(routed) < 40
        answers = [await trial.answer(["x"]) for _ in range(3)]
        return trial, answers, registry

    trial, answers, registry = asyncio.run(run())
    assert answers[0][0].version == "2" and answers[1] is None  # the second call failed: the champion answers
    assert trial.candidate is None and trial.phase == "ended"
    assert "rolled back at 50%" in trial.ended and "error rate 1/2" in trial.ended
    assert not trial.routes("c0") and answers[2] is None
    text = generate_latest(registry).decode()
    assert 'bertops_serving_canary_rollbacks_total{model="m"} 1.0' in text
    assert 'bertops_serving_canary_percent{model="m"} 0.0' in text


def test_request_answer_joins_texts_and_reads_entities() -> None:
    a = request_answer([_pred("positive", 0.8), _pred("negative", 0.6)], 3.0)
    assert a.label == "positive|negative" and a.confidence == pytest.approx(0.7) and a.latency_ms == 3.0
    ner = request_answer(
        [{"entities": [{"type": "PER", "start": 0, "end": 4, "score": 0.5, "text": "Anna"}]}], 1.0
    )
    assert ner.label == '[["PER", 0, 4]]' and ner.confidence == 0.5


def test_a_shadow_call_waits_for_its_turn_takes_few_texts_and_times_only_itself() -> None:
    sizes: list[int] = []

    async def call(model, texts):
        sizes.append(len(texts))
        return [_pred("positive") for _ in texts]

    async def run():
        turn = asyncio.Event()
        waits = {"n": 0}

        async def wait_turn():  # the service's: the champion idle for a while
            waits["n"] += 1
            await turn.wait()

        registry = CollectorRegistry()
        trial = LiveTrial(_loaded("2"), 64, call, LiveMetrics(registry), wait_turn=wait_turn)
        trial.start_shadow(max_batch_texts=3)
        for i in range(10):
            trial.mirror(f"r{i}", ["x"], [_pred("positive")], ms=1.0)
        await asyncio.sleep(0.1)  # no turn yet: nothing called, everything still queued
        called_before_turn = list(sizes)
        turn.set()
        await asyncio.sleep(0.05)
        await trial.stop_shadow()
        return trial.tally.report(), called_before_turn, waits["n"]

    report, before, waits = asyncio.run(run())
    assert before == [] and report.compared == 10 and report.dropped == 0
    assert max(sizes) <= 3 and sum(sizes) == 10 and waits == len(sizes)
    assert report.candidate_p99_ms is not None and report.candidate_p99_ms < 50  # the 100 ms wait is not in it
