"""The promotion gate: a pure decision over two metric dicts, so it is testable without MLflow.

``decide(candidate, champion, thresholds)`` compares a candidate's evaluation metrics with the current
champion's (both measured on the same test split by :func:`bertops.evaluation.evaluate.evaluate`) and returns a
:class:`GateDecision` listing every check it made::

    decision = decide(cand_metrics, champ_metrics, GateThresholds.from_config(cfg.promotion))
    decision.passed, decision.status, decision.reason

The checks, in order:

1. ``absolute``: the candidate's ``metric`` reaches ``min_absolute`` (always checked; the only quality check
   for the first model, when there is no champion).
2. ``baseline``: a classifier's test ``accuracy`` beats the majority-class baseline (``majority_accuracy``, always
   answering the most frequent test class) by at least ``min_over_majority``: a model that learned nothing but
   the class balance never passes, whatever ``min_absolute`` says. An NER model's ``entity_f1`` likewise beats
   the all-``O`` baseline (``all_o_entity_f1``, never finding an entity) by that margin. Checked when both
   metrics are present.
3. ``improvement``: candidate minus champion on ``metric`` is at least ``min_improvement`` (an equal candidate
   passes when ``min_improvement`` is 0, fails when it is positive).
4. ``regression:<key>``: no per-class F1 and no length-slice accuracy falls more than ``max_regression`` below
   the champion's (slices present in both only).
5. ``latency``: the candidate's p50 batch-1 latency is at most ``max_latency_ms``.

For lower-is-better metrics (log loss, ECE, perplexity) the comparisons flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bertops.evaluation.metrics import LOWER_IS_BETTER, SLICE_PREFIX

if TYPE_CHECKING:
    from bertops.config import PromotionConfig

LATENCY_METRIC = "latency_p50_ms_batch1"
MAJORITY_METRIC = "majority_accuracy"
ALL_O_METRIC = "all_o_entity_f1"
# Each metric with a trivial baseline: the baseline's metric name, and what the baseline answers.
BASELINES = {
    "accuracy": (MAJORITY_METRIC, "majority-class baseline"),
    "entity_f1": (ALL_O_METRIC, "all-O baseline"),
}
PASSED, FAILED, PENDING = "passed", "failed", "pending-approval"


@dataclass(frozen=True)
class GateThresholds:
    """The thresholds of ``params.yaml``'s ``promotion`` section that the decision needs."""

    metric: str = "accuracy"
    min_absolute: float = 0.6
    min_improvement: float = 0.0
    max_regression: float = 0.05
    max_latency_ms: float = 200.0
    min_over_majority: float = 0.02

    @classmethod
    def from_config(cls, cfg: PromotionConfig, task: str = "classification") -> GateThresholds:
        """The thresholds for ``task``: NER compares ``promotion.ner_metric`` against ``ner_min_absolute``."""
        metric, floor = (
            (cfg.ner_metric, cfg.ner_min_absolute) if task == "ner" else (cfg.metric, cfg.min_absolute)
        )
        return cls(
            metric, floor, cfg.min_improvement, cfg.max_regression, cfg.max_latency_ms, cfg.min_over_majority,
        )  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One comparison the gate made: what, the candidate's value, the bound it had to meet, the outcome."""

    name: str
    passed: bool
    value: float | None
    bound: float | None
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The outcome of the gate: ``passed`` when every check passed; ``reason`` summarises the failures."""

    passed: bool
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None
    candidate_version: str | None = None

    @property
    def status(self) -> str:
        return PASSED if self.passed else FAILED

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def reason(self) -> str:
        if self.passed:
            return "all checks passed: " + "; ".join(c.detail for c in self.checks)
        return "; ".join(c.detail for c in self.failures)

    def to_dict(self) -> dict[str, Any]:
        """Small, JSON-safe form (for XCom, tags and the CLI)."""
        return {
            "passed": self.passed,
            "status": self.status,
            "reason": self.reason,
            "champion_version": self.champion_version,
            "candidate_version": self.candidate_version,
            "checks": [asdict(c) for c in self.checks],
        }


def _better(metric: str, a: float, b: float) -> float:
    """How much better ``a`` is than ``b`` (positive = better), respecting the metric's direction."""
    return (b - a) if metric in LOWER_IS_BETTER else (a - b)


def _regression_keys(candidate: Mapping[str, float], champion: Mapping[str, float]) -> list[str]:
    keys = []
    for key in champion:
        per_class = key.startswith("f1_")
        per_slice = key.startswith(SLICE_PREFIX) and key.endswith("_accuracy")
        if (per_class or per_slice) and key in candidate:
            keys.append(key)
    return sorted(keys)


def _finite(metrics: Mapping[str, float], key: str, who: str) -> float:
    if key not in metrics:
        raise KeyError(f"the {who}'s metrics have no {key!r} (have: {', '.join(sorted(metrics)) or 'none'})")
    value = float(metrics[key])
    if not math.isfinite(value):
        raise ValueError(f"the {who}'s metric {key!r} is {value}, not a finite number")
    return value


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    thresholds: GateThresholds,
    candidate_version: str | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Decide whether ``candidate`` may replace ``champion`` (None: there is no champion yet)."""
    t = thresholds
    m = t.metric
    lower = m in LOWER_IS_BETTER
    checks: list[Check] = []

    value = _finite(candidate, m, "candidate")
    ok = value <= t.min_absolute if lower else value >= t.min_absolute
    op = "<=" if lower else ">="
    checks.append(
        Check(
            "absolute",
            ok,
            value,
            t.min_absolute,
            f"{m}={value:.4f} {'meets' if ok else 'misses'} the minimum {op} {t.min_absolute}",
        )
    )

    for key, (baseline_key, what) in BASELINES.items():
        if baseline_key not in candidate or key not in candidate:
            continue
        score, baseline = _finite(candidate, key, "candidate"), float(candidate[baseline_key])
        margin = score - baseline
        ok = margin >= t.min_over_majority - 1e-12
        checks.append(
            Check(
                "baseline",
                ok,
                margin,
                t.min_over_majority,
                f"{key} {score:.4f} vs {what} {baseline:.4f}: margin {margin:+.4f} "
                f"({'>=' if ok else '<'} required {t.min_over_majority:+.4f})",
            )
        )

    if champion is not None:
        base = _finite(champion, m, "champion")
        gain = _better(m, value, base)
        ok = gain >= t.min_improvement - 1e-12
        checks.append(
            Check(
                "improvement",
                ok,
                gain,
                t.min_improvement,
                f"{m} {value:.4f} vs champion {base:.4f}: change {gain:+.4f} "
                f"({'>=' if ok else '<'} required {t.min_improvement:+.4f})",
            )
        )
        for key in _regression_keys(candidate, champion):
            drop = -_better(key, float(candidate[key]), float(champion[key]))
            ok = drop <= t.max_regression + 1e-12
            checks.append(
                Check(
                    f"regression:{key}",
                    ok,
                    drop,
                    t.max_regression,
                    f"{key} {float(candidate[key]):.4f} vs champion {float(champion[key]):.4f}: "
                    f"drop {drop:.4f} {'<=' if ok else '>'} allowed {t.max_regression}",
                )
            )

    if LATENCY_METRIC in candidate:
        latency = float(candidate[LATENCY_METRIC])
        ok = latency <= t.max_latency_ms
        checks.append(
            Check(
                "latency",
                ok,
                latency,
                t.max_latency_ms,
                f"p50 batch-1 latency {latency:.1f} ms {'<=' if ok else '>'} {t.max_latency_ms} ms",
            )
        )
    else:
        checks.append(
            Check("latency", False, None, t.max_latency_ms, f"no {LATENCY_METRIC} measured for the candidate")
        )

    return GateDecision(
        passed=all(c.passed for c in checks),
        checks=checks,
        champion_version=champion_version,
        candidate_version=candidate_version,
    )
