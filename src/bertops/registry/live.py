"""Judging a candidate on live traffic: the shadow report, its gate, canary routing and the canary's limits.

The service feeds a :class:`ShadowTally` with each mirrored request (the champion's answer, the candidate's
answer or error, both latencies, a feedback label where one came); :meth:`ShadowTally.report` gives the
:class:`ShadowReport` that :func:`shadow_decision` judges under ``promotion.shadow``::

    tally = ShadowTally()
    tally.add(champion=Answer("positive", 0.91, 4.2), candidate=Answer("positive", 0.88, 5.0))
    decision = shadow_decision(tally.report(), cfg.promotion.shadow)
    record_shadow(client, name, version, tally.report(), decision)   # tags, metrics run, model card section

Canary routing is a stable hash of the caller (:func:`canary_bucket`): the same caller keeps landing on the same
model while the share only widens, so a caller moves from champion to candidate at most once.
:func:`canary_verdict` says whether a step may widen, must roll back, or needs more requests.

Pure apart from :func:`record_shadow`; no threads, no I/O on the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.registry.gate import Check, GateDecision

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from bertops.config import CanaryConfig, ShadowConfig

logger = logging.getLogger(__name__)

TAG_SHADOW = "bertops.shadow"
TAG_SHADOW_REASON = "bertops.shadow_reason"
TAG_SHADOW_RUN = "bertops.shadow_run_id"
TAG_CANARY = "bertops.canary"  # passed / failed: the canary's outcome on the version, beside the shadow's
TAG_CANARY_REASON = "bertops.canary_reason"
SHADOW_EXPERIMENT = "bertops-shadow"
CARD_SECTION = "## Live shadow (mirrored traffic)"
CANARY_BUCKETS = 10_000


@dataclass(frozen=True)
class Answer:
    """One model's answer to one request: the label (or an entity-set key for NER), its confidence, latency."""

    label: str
    confidence: float
    latency_ms: float


@dataclass(frozen=True)
class ShadowReport:
    """What the shadow phase saw. Latencies in ms; ``None`` where there was nothing to measure."""

    requests: int
    compared: int
    errors: int
    dropped: int
    agreement: float | None
    champion_p50_ms: float | None
    champion_p99_ms: float | None
    candidate_p50_ms: float | None
    candidate_p99_ms: float | None
    p99_ratio: float | None
    confidence_shift: float | None
    feedback: int = 0
    candidate_feedback_accuracy: float | None = None
    champion_feedback_accuracy: float | None = None

    def metrics(self) -> dict[str, float]:
        """The report's figures as MLflow metrics (``shadow_`` prefix; missing figures left out)."""
        return {f"shadow_{k}": float(v) for k, v in asdict(self).items() if v is not None}

    def rows(self) -> list[tuple[str, str]]:
        def fmt(v: Any) -> str:
            return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

        return [(k, fmt(v)) for k, v in asdict(self).items()]


@dataclass
class ShadowTally:
    """Running figures of a shadow phase; one :meth:`add` per mirrored request (the service's side)."""

    requests: int = 0
    errors: int = 0
    dropped: int = 0
    agree: int = 0
    champion_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    champion_conf: list[float] = field(default_factory=list)
    candidate_conf: list[float] = field(default_factory=list)
    feedback_pairs: list[tuple[bool, bool]] = field(default_factory=list)

    def add(self, champion: Answer, candidate: Answer | None, label: str | None = None) -> None:
        """``candidate`` None: the candidate failed on this request (counted as an error, not compared)."""
        self.requests += 1
        self.champion_ms.append(champion.latency_ms)
        if candidate is None:
            self.errors += 1
            return
        self.agree += candidate.label == champion.label
        self.candidate_ms.append(candidate.latency_ms)
        self.champion_conf.append(champion.confidence)
        self.candidate_conf.append(candidate.confidence)
        if label is not None:
            self.feedback_pairs.append((candidate.label == label, champion.label == label))

    def add_feedback(self, candidate_correct: bool, champion_correct: bool) -> None:
        """A true label that came after the request was compared (``POST /feedback`` by its request id)."""
        self.feedback_pairs.append((candidate_correct, champion_correct))

    def drop(self, n: int = 1) -> None:
        """A mirrored request was not sent (the candidate's queue was full): counted, never waited for."""
        self.dropped += n

    def report(self) -> ShadowReport:
        compared = len(self.candidate_ms)
        c50, c99 = _percentiles(self.champion_ms)
        k50, k99 = _percentiles(self.candidate_ms)
        fb = self.feedback_pairs
        return ShadowReport(
            requests=self.requests,
            compared=compared,
            errors=self.errors,
            dropped=self.dropped,
            agreement=self.agree / compared if compared else None,
            champion_p50_ms=c50,
            champion_p99_ms=c99,
            candidate_p50_ms=k50,
            candidate_p99_ms=k99,
            p99_ratio=(k99 / c99) if (k99 is not None and c99) else None,
            confidence_shift=(
                float(np.mean(self.candidate_conf) - np.mean(self.champion_conf)) if compared else None
            ),
            feedback=len(fb),
            candidate_feedback_accuracy=(sum(a for a, _ in fb) / len(fb)) if fb else None,
            champion_feedback_accuracy=(sum(b for _, b in fb) / len(fb)) if fb else None,
        )


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return float(p50), float(p99)


def shadow_decision(report: ShadowReport, cfg: ShadowConfig, version: str | None = None) -> GateDecision:
    """The final gate step on live traffic: enough requests compared, agreement, p99 ratio, errors; and, once
    ``min_feedback`` feedback-labelled requests came, accuracy on them no more than ``max_feedback_drop`` below
    the champion's."""
    checks = [
        Check(
            "shadow-requests",
            report.compared >= cfg.requests,
            float(report.compared),
            float(cfg.requests),
            f"{report.compared} mirrored requests compared ({'>=' if report.compared >= cfg.requests else '<'} "
            f"required {cfg.requests}; {report.dropped} dropped)",
        ),
        Check(
            "shadow-errors",
            report.errors <= cfg.max_errors,
            float(report.errors),
            float(cfg.max_errors),
            f"{report.errors} candidate errors (at most {cfg.max_errors})",
        ),
    ]
    if report.agreement is not None:
        ok = report.agreement >= cfg.min_agreement - 1e-12
        checks.append(Check("shadow-agreement", ok, report.agreement, cfg.min_agreement,
                            f"agreement with the champion {report.agreement:.4f} "
                            f"({'>=' if ok else '<'} required {cfg.min_agreement})"))  # fmt: skip
    if report.p99_ratio is not None:
        ok = report.p99_ratio <= cfg.max_p99_ratio + 1e-12
        checks.append(Check("shadow-latency", ok, report.p99_ratio, cfg.max_p99_ratio,
                            f"p99 {report.candidate_p99_ms:.1f} ms vs champion {report.champion_p99_ms:.1f} ms: "
                            f"ratio {report.p99_ratio:.2f} ({'<=' if ok else '>'} allowed {cfg.max_p99_ratio})"))  # fmt: skip
    if report.candidate_feedback_accuracy is not None and report.champion_feedback_accuracy is not None:
        gain = report.candidate_feedback_accuracy - report.champion_feedback_accuracy
        judged = report.feedback >= cfg.min_feedback
        ok = not judged or gain >= -cfg.max_feedback_drop - 1e-12
        detail = (
            f"accuracy on {report.feedback} feedback-labelled requests {report.candidate_feedback_accuracy:.4f} "
            f"vs champion {report.champion_feedback_accuracy:.4f} ({gain:+.4f}; "
            + (
                f"allowed drop {cfg.max_feedback_drop})"
                if judged
                else f"not judged below {cfg.min_feedback})"
            )
        )
        checks.append(Check("shadow-feedback", ok, gain, -cfg.max_feedback_drop, detail))
    return GateDecision(all(c.passed for c in checks), checks, candidate_version=version)


def render_shadow_section(report: ShadowReport, decision: GateDecision) -> str:
    """The model card's live-shadow section: the result, each check, the report's figures."""
    lines = [CARD_SECTION, "", f"**Result: {decision.status}**", ""]
    lines += [f"- {c.detail}" for c in decision.checks]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.rows()]
    return "\n".join(lines)


def with_section(card: str, section: str, before: str = "## Limitations") -> str:
    """``card`` with ``section`` (starting with its ``## `` title line) replacing a section of the same title,
    or inserted before ``before`` (appended when the card has no such heading)."""
    title = section.splitlines()[0]
    lines = card.splitlines()
    tail = "\n" if card.endswith("\n") else ""
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        return "\n".join([*lines[:start], *section.splitlines(), "", *lines[end:]]) + tail
    if before in lines:
        at = lines.index(before)
        return "\n".join([*lines[:at], *section.splitlines(), "", *lines[at:]]) + tail
    return card.rstrip("\n") + "\n\n" + section + "\n"


def record_shadow(
    client: MlflowClient, name: str, version: str, report: ShadowReport, decision: GateDecision
) -> str:
    """Log the shadow report to MLflow against ``name`` v``version``: a run in ``bertops-shadow`` with the
    figures as metrics and ``shadow_report.json``, the version's tags ``bertops.shadow`` / ``_reason`` /
    ``_run_id``, and the section in its model card. Returns the run id."""
    from bertops.registry import registry as reg

    experiment = client.get_experiment_by_name(SHADOW_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(SHADOW_EXPERIMENT)
    run = client.create_run(
        experiment_id,
        tags={"bertops.registered_model": name, "bertops.model_version": str(version),
              "mlflow.runName": f"shadow-{name}-v{version}"},
    )  # fmt: skip
    run_id = run.info.run_id
    for key, value in report.metrics().items():
        client.log_metric(run_id, key, value)
    client.log_dict(run_id, {"report": asdict(report), "decision": decision.to_dict()}, "shadow_report.json")
    client.set_terminated(run_id)
    reg.set_tags(
        client, name, version,
        {TAG_SHADOW: decision.status, TAG_SHADOW_REASON: decision.reason, TAG_SHADOW_RUN: run_id},
    )  # fmt: skip
    card = reg.get_version(client, name, version).description or ""
    client.update_model_version(
        name, version, description=with_section(card, render_shadow_section(report, decision))
    )
    logger.info("shadow of %s v%s: %s (%s)", name, version, decision.status, decision.reason)
    return run_id


# ---------------------------------------------------------------------------------------------- canary
def canary_bucket(key: str) -> float:
    """The caller's fixed place in [0, 100): the first bytes of SHA-256 of ``key`` (a client id, an API key,
    or the request id when the caller has none)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") % CANARY_BUCKETS) * 100.0 / CANARY_BUCKETS


def routes_to_candidate(key: str, percent: float) -> bool:
    """Whether ``key``'s requests go to the candidate while ``percent`` of traffic does."""
    return canary_bucket(key) < percent


def canary_shares(cfg: CanaryConfig) -> list[float]:
    """The shares of one canary, in order: ``percent``, then ``steps``; the last step before the switch."""
    return [cfg.percent, *cfg.steps]


@dataclass(frozen=True)
class CanaryVerdict:
    """``action``: ``widen`` (healthy, enough requests), ``rollback`` (a limit passed) or ``wait``."""

    action: str
    reason: str


def canary_verdict(
    requests: int,
    errors: int,
    candidate_p99_ms: float | None,
    champion_p99_ms: float | None,
    cfg: CanaryConfig,
) -> CanaryVerdict:
    """Judge one canary step from the candidate's request and error counts and both p99 latencies."""
    if requests and errors / requests > cfg.max_error_rate:
        return CanaryVerdict(
            "rollback",
            f"candidate error rate {errors}/{requests} = {errors / requests:.4f} > {cfg.max_error_rate}",
        )
    if candidate_p99_ms is not None and champion_p99_ms and math.isfinite(candidate_p99_ms):
        ratio = candidate_p99_ms / champion_p99_ms
        if ratio > cfg.max_p99_ratio and requests >= cfg.step_requests:
            return CanaryVerdict(
                "rollback",
                f"candidate p99 {candidate_p99_ms:.1f} ms vs champion {champion_p99_ms:.1f} ms: ratio {ratio:.2f} "
                f"> {cfg.max_p99_ratio}",
            )
    if requests >= cfg.step_requests:
        return CanaryVerdict("widen", f"{requests} requests, {errors} errors: within limits")
    return CanaryVerdict("wait", f"{requests} of {cfg.step_requests} requests so far")


def report_json(report: ShadowReport, decision: GateDecision) -> str:
    """The report and decision as one JSON document (the DAG summary and the CLI print it)."""
    return json.dumps({"report": asdict(report), "decision": decision.to_dict()}, indent=2)


__all__ = [
    "Answer",
    "CanaryVerdict",
    "ShadowReport",
    "ShadowTally",
    "canary_bucket",
    "canary_shares",
    "canary_verdict",
    "record_shadow",
    "render_shadow_section",
    "routes_to_candidate",
    "shadow_decision",
    "with_section",
]
