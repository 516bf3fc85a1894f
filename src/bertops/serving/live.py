"""A candidate version beside a served model's champion, on live traffic: shadow, then canary.

One :class:`LiveTrial` per served model, held by the replica (``BertopsService.trials``):

- **shadow**: every request the champion answered is offered to a bounded queue (:meth:`LiveTrial.mirror`,
  ``put_nowait``: a full queue drops it and counts the drop; the request never waits). A background task waits
  for its turn, takes at most ``batch_texts`` queued texts, calls the candidate once on them and adds each
  request's two answers to the
  :class:`~bertops.registry.live.ShadowTally`. Shadow answers never reach a client. Feedback that arrives for a
  mirrored request (``POST /feedback``, by its request id) adds to the tally's feedback accuracy.
- **canary**: with a percent set, :func:`~bertops.registry.live.routes_to_candidate` of the caller key (header
  ``X-Bertops-Caller``, else the client address) sends the request to the candidate. A candidate error is
  counted and the request is answered by the champion (the client sees no failure); after every candidate
  answer the step is judged by :func:`~bertops.registry.live.canary_verdict`, and a ``rollback`` drops the
  candidate at once (the champion answers everything again).

The orchestration side drives the phases through the admin routes (:mod:`bertops.serving.live_client`). A
candidate that fails to load or to warm up is never held, so it gets no traffic.

Pure asyncio apart from what the service passes in: its model call, under its model lock, and for the shadow a
wait for its turn: the champion has had no batch running or queued for ``quiet_ms``. Mirroring takes no turn
from the champion, and a champion request that arrives during a shadow call waits for at most one small call;
under saturation the queue fills and sheds, counted as ``dropped``. The candidate's latency in the report is its
call's own, from its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bertops.config import CanaryConfig
from bertops.registry.live import Answer, CanaryVerdict, ShadowTally, canary_verdict, routes_to_candidate
from bertops.serving.model_store import LoadedModel

logger = logging.getLogger("ray.serve.bertops.live")

CALLER_HEADER = "x-bertops-caller"
KEEP_ANSWERS = 10_000  # mirrored requests whose per-text labels are kept for feedback that comes later
Call = Callable[[LoadedModel, list[str]], Awaitable[list[dict[str, Any]]]]


def answer_key(prediction: dict[str, Any]) -> tuple[str, float]:
    """One text's answer as (label, confidence): a classifier's label and probability; an NER model's entity
    set (type and offsets) and its mean score."""
    if "entities" in prediction:
        entities = prediction["entities"]
        key = json.dumps([[e["type"], e["start"], e["end"]] for e in entities])
        return key, float(np.mean([e["score"] for e in entities])) if entities else 1.0
    return str(prediction["label"]), float(prediction["probability"])


def request_answer(predictions: list[dict[str, Any]], latency_ms: float) -> Answer:
    """A whole request's answer: the labels of its texts joined (a request agrees when every text does)."""
    keys = [answer_key(p) for p in predictions]
    confidence = float(np.mean([c for _, c in keys])) if keys else 1.0
    return Answer("|".join(k for k, _ in keys), confidence, latency_ms)


@dataclass
class CanaryStep:
    """One canary share and what the candidate and the champion did while it held."""

    percent: float
    limits: CanaryConfig
    requests: int = 0
    errors: int = 0
    candidate_ms: list[float] = field(default_factory=list)
    champion_ms: list[float] = field(default_factory=list)

    def p99(self, values: list[float]) -> float | None:
        return float(np.percentile(values, 99)) if values else None

    def verdict(self) -> CanaryVerdict:
        return canary_verdict(
            self.requests, self.errors, self.p99(self.candidate_ms), self.p99(self.champion_ms), self.limits
        )

    def to_dict(self) -> dict[str, Any]:
        verdict = self.verdict()
        return {
            "percent": self.percent, "requests": self.requests, "errors": self.errors,
            "candidate_p99_ms": self.p99(self.candidate_ms), "champion_p99_ms": self.p99(self.champion_ms),
            "verdict": {"action": verdict.action, "reason": verdict.reason},
        }  # fmt: skip


@dataclass
class _Mirrored:
    request_id: str
    texts: list[str]
    predictions: list[dict[str, Any]]
    latency_ms: float


class LiveTrial:
    """The candidate of one served model and its shadow and canary state (see the module docstring)."""

    def __init__(
        self,
        model: LoadedModel,
        queue_size: int,
        call: Call,
        metrics: LiveMetrics,
        wait_turn: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.candidate: LoadedModel | None = model
        self.name, self.version = model.name, model.version
        self.tally = ShadowTally()
        self.canary: CanaryStep | None = None
        self.ended: str | None = None  # why the candidate was dropped (rollback, promoted, replaced)
        self._queue: asyncio.Queue[_Mirrored] = asyncio.Queue(maxsize=queue_size)
        self._call = call  # a canary request's answer, and a mirrored batch's call once it has its turn
        self._wait_turn = wait_turn  # the service's: returns once the champion has been idle a while
        self._metrics = metrics
        self._worker: asyncio.Task | None = None
        self._answers: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()  # request id -> per text
        metrics.phase(model.name, model.version, "loaded")

    @property
    def shadowing(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def phase(self) -> str:
        if self.candidate is None:
            return "ended"
        if self.canary is not None:
            return "canary"
        return "shadow" if self.shadowing else "loaded"

    # ----------------------------------------------------------------------------------------- shadow
    def start_shadow(self, max_batch_texts: int) -> None:
        """Mirror from now on; each candidate call takes at most ``max_batch_texts`` queued texts."""
        if not self.shadowing:
            self._worker = asyncio.get_running_loop().create_task(self._shadow_loop(max_batch_texts))
        self._metrics.phase(self.name, self.version, self.phase)

    async def stop_shadow(self) -> None:
        """Stop mirroring; what is still queued is counted as dropped (never compared)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self.tally.drop()
            self._metrics.shadow(self.name, "dropped")
        if self.candidate is not None:
            self._metrics.phase(self.name, self.version, self.phase)

    def mirror(self, request_id: str, texts: list[str], predictions: list[dict[str, Any]], ms: float) -> None:
        """Offer one answered request to the candidate. Never waits: a full queue drops it (counted)."""
        if not self.shadowing:
            return
        try:
            self._queue.put_nowait(_Mirrored(request_id, list(texts), predictions, ms))
        except asyncio.QueueFull:
            self.tally.drop()
            self._metrics.shadow(self.name, "dropped")

    async def _shadow_loop(self, max_batch_texts: int) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._wait_turn is not None:
                await self._wait_turn()  # then no await until the call holds the model lock
            while not self._queue.empty() and sum(len(m.texts) for m in batch) < max_batch_texts:
                batch.append(self._queue.get_nowait())
            model = self.candidate
            if model is None:
                return
            started = time.perf_counter()  # the candidate's own latency: from its turn, not from the wait
            try:
                answers = await self._call(model, [t for m in batch for t in m.texts])
            except Exception as exc:  # any failure of the candidate is a figure of the report, not a crash
                logger.warning("shadow: %s v%s failed on %d mirrored requests: %s: %s",
                               model.name, model.version, len(batch), type(exc).__name__, exc)  # fmt: skip
                answers = None
            ms = (time.perf_counter() - started) * 1000
            self._compare(batch, answers, ms)

    def _compare(self, batch: list[_Mirrored], answers: list[dict[str, Any]] | None, ms: float) -> None:
        at = 0
        for m in batch:
            champion = request_answer(m.predictions, m.latency_ms)
            if answers is None:
                self.tally.add(champion, None)
                self._metrics.shadow(self.name, "error")
                continue
            mine = answers[at : at + len(m.texts)]
            at += len(m.texts)
            self.tally.add(champion, request_answer(mine, ms))
            self._metrics.shadow(self.name, "compared", ms / 1000)
            self._answers[m.request_id] = [
                (answer_key(c)[0], answer_key(k)[0]) for c, k in zip(m.predictions, mine, strict=True)
            ]
            if len(self._answers) > KEEP_ANSWERS:
                self._answers.popitem(last=False)
        report = self.tally.report()
        if report.agreement is not None:
            self._metrics.agreement(self.name, report.agreement)

    def feedback(self, request_id: str, index: int, label: str | None) -> bool:
        """A true label for text ``index`` of a mirrored request: scored for both models (True if it was one)."""
        pairs = self._answers.pop(request_id, None)
        if pairs is None or label is None or not 0 <= index < len(pairs):
            return False
        champion, candidate = pairs[index]
        self.tally.add_feedback(candidate == label, champion == label)
        return True

    # ----------------------------------------------------------------------------------------- canary
    def set_canary(self, percent: float, limits: CanaryConfig) -> None:
        """A new share (0 ends the canary); each share is a fresh step with its own counts."""
        self.canary = CanaryStep(percent, limits) if percent > 0 else None
        self._metrics.canary_percent(self.name, percent)
        self._metrics.phase(self.name, self.version, self.phase)

    def routes(self, caller: str) -> bool:
        return (
            self.candidate is not None
            and self.canary is not None
            and routes_to_candidate(caller, self.canary.percent)
        )

    async def answer(self, texts: list[str]) -> tuple[LoadedModel, list[dict[str, Any]]] | None:
        """The candidate's answer to a canary request, or None when it failed (the champion answers then)."""
        model, step = self.candidate, self.canary
        if model is None or step is None:
            return None
        started = time.perf_counter()
        try:
            predictions = await self._call(model, texts)
        except Exception as exc:  # counted against the candidate; the client is answered by the champion
            step.requests += 1
            step.errors += 1
            self._metrics.canary(self.name, "error")
            logger.warning("canary: %s v%s failed a request: %s: %s", model.name, model.version,
                           type(exc).__name__, exc)  # fmt: skip
            self._judge(step)
            return None
        step.requests += 1
        step.candidate_ms.append((time.perf_counter() - started) * 1000)
        self._metrics.canary(self.name, "answered", step.candidate_ms[-1] / 1000)
        self._judge(step)
        return model, predictions

    def champion_answered(self, ms: float) -> None:
        if self.canary is not None:
            self.canary.champion_ms.append(ms)

    def _judge(self, step: CanaryStep) -> None:
        verdict = step.verdict()
        if verdict.action == "rollback" and self.candidate is not None:
            self.end(f"rolled back at {step.percent}%: {verdict.reason}")
            self._metrics.rollback(self.name)

    # -------------------------------------------------------------------------------------------- end
    def end(self, why: str) -> None:
        """Drop the candidate: no more traffic reaches it (the report stays readable)."""
        if self.candidate is None:
            return
        logger.info("candidate %s v%s dropped: %s", self.candidate.name, self.version, why)
        self._metrics.phase(self.candidate.name, self.version, None)
        self._metrics.canary_percent(self.candidate.name, 0)
        self.candidate, self.canary, self.ended = None, None, why
        if self._worker is not None:
            self._worker.cancel()

    def status(self) -> dict[str, Any]:
        return {
            "candidate_version": self.version, "phase": self.phase, "shadowing": self.shadowing,
            "queued": self._queue.qsize(), "report": asdict(self.tally.report()),
            "canary": self.canary.to_dict() if self.canary else None, "ended": self.ended,
        }  # fmt: skip


class LiveMetrics:
    """Prometheus figures of shadow and canary, in the replica's registry (``GET /metrics``):
    ``bertops_serving_candidate_info{model, version, phase}``, ``shadow_requests_total{model, outcome}``
    (``compared``, ``error``, ``dropped``), ``shadow_agreement{model}``, ``candidate_latency_seconds{model,
    phase}``, ``canary_percent{model}``, ``canary_requests_total{model, outcome}`` (``answered``, ``error``),
    ``canary_rollbacks_total{model}``."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from bertops.serving.metrics import LATENCY_BUCKETS, PREFIX

        r = registry
        self.info = Gauge(f"{PREFIX}_candidate_info", "1 for the candidate held beside the champion",
                          ["model", "version", "phase"], registry=r)  # fmt: skip
        self.shadow_requests = Counter(f"{PREFIX}_shadow_requests", "Mirrored requests by outcome",
                                       ["model", "outcome"], registry=r)  # fmt: skip
        self.shadow_agreement = Gauge(f"{PREFIX}_shadow_agreement", "Share of mirrored requests answered alike",
                                      ["model"], registry=r)  # fmt: skip
        self.latency = Histogram(f"{PREFIX}_candidate_latency_seconds", "Candidate model call time",
                                 ["model", "phase"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.percent = Gauge(f"{PREFIX}_canary_percent", "Share of requests sent to the candidate",
                             ["model"], registry=r)  # fmt: skip
        self.canary_requests = Counter(f"{PREFIX}_canary_requests", "Canary requests by outcome",
                                       ["model", "outcome"], registry=r)  # fmt: skip
        self.rollbacks = Counter(f"{PREFIX}_canary_rollbacks", "Automatic canary rollbacks", ["model"],
                                 registry=r)  # fmt: skip
        self._phases: dict[str, tuple[str, str]] = {}

    def phase(self, model: str, version: str, phase: str | None) -> None:
        old = self._phases.pop(model, None)
        if old is not None:
            self.info.remove(model, *old)
        if phase is not None:
            self.info.labels(model=model, version=version, phase=phase).set(1)
            self._phases[model] = (version, phase)

    def shadow(self, model: str, outcome: str, seconds: float | None = None) -> None:
        self.shadow_requests.labels(model=model, outcome=outcome).inc()
        if seconds is not None:
            self.latency.labels(model=model, phase="shadow").observe(seconds)

    def agreement(self, model: str, value: float) -> None:
        self.shadow_agreement.labels(model=model).set(value)

    def canary_percent(self, model: str, percent: float) -> None:
        self.percent.labels(model=model).set(percent)

    def canary(self, model: str, outcome: str, seconds: float | None = None) -> None:
        self.canary_requests.labels(model=model, outcome=outcome).inc()
        if seconds is not None:
            self.latency.labels(model=model, phase="canary").observe(seconds)

    def rollback(self, model: str) -> None:
        self.rollbacks.labels(model=model).inc()
