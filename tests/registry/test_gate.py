"""The promotion decision as a pure function: better, worse, equal, one-class regression, first model."""

from __future__ import annotations

import pytest

from bertops.registry.gate import LATENCY_METRIC, MAJORITY_METRIC, GateThresholds, decide

T = GateThresholds(
    metric="accuracy", min_absolute=0.6, min_improvement=0.0, max_regression=0.05, max_latency_ms=200
)


def metrics(
    acc: float, f1_neg: float, f1_pos: float, short: float = 0.8, latency: float = 10.0
) -> dict[str, float]:
    return {
        "accuracy": acc,
        "f1_negative": f1_neg,
        "f1_positive": f1_pos,
        "slice_len_0_32_accuracy": short,
        LATENCY_METRIC: latency,
    }


CHAMPION = metrics(0.80, 0.78, 0.82)


def test_better_candidate_passes() -> None:
    d = decide(metrics(0.85, 0.83, 0.86, short=0.85), CHAMPION, T, "2", "1")
    assert d.passed and d.status == "passed"
    assert {c.name for c in d.checks} >= {"absolute", "improvement", "latency", "regression:f1_negative"}
    assert d.to_dict()["champion_version"] == "1"


def test_worse_candidate_fails_naming_the_metric() -> None:
    d = decide(metrics(0.75, 0.76, 0.79, short=0.79), CHAMPION, T)
    assert not d.passed and d.status == "failed"
    assert [c.name for c in d.failures] == ["improvement"]
    assert "accuracy 0.7500 vs champion 0.8000" in d.reason


def test_equal_candidate_passes_only_without_required_improvement() -> None:
    assert decide(dict(CHAMPION), CHAMPION, T).passed
    strict = GateThresholds(min_improvement=0.01)
    d = decide(dict(CHAMPION), CHAMPION, strict)
    assert not d.passed and [c.name for c in d.failures] == ["improvement"]


def test_regression_on_one_class_fails_despite_better_accuracy() -> None:
    d = decide(metrics(0.86, 0.70, 0.95), CHAMPION, T)
    assert not d.passed
    assert [c.name for c in d.failures] == ["regression:f1_negative"]
    assert "f1_negative" in d.reason and "drop 0.0800" in d.reason


def test_regression_on_a_length_slice_fails() -> None:
    d = decide(metrics(0.86, 0.84, 0.87, short=0.70), CHAMPION, T)
    assert [c.name for c in d.failures] == ["regression:slice_len_0_32_accuracy"]


def test_slow_candidate_fails_on_latency() -> None:
    d = decide(metrics(0.9, 0.9, 0.9, latency=350), CHAMPION, T)
    assert [c.name for c in d.failures] == ["latency"]


def test_first_model_needs_only_the_absolute_threshold() -> None:
    assert decide(metrics(0.61, 0.1, 0.9), None, T).passed  # no champion: no regression checks
    d = decide(metrics(0.55, 0.5, 0.6), None, T)
    assert [c.name for c in d.failures] == ["absolute"] and "misses the minimum" in d.reason


def test_majority_class_model_fails_the_baseline_check_whatever_the_absolute_threshold() -> None:
    # 0.578 is what always answering "positive" scores on a test split that is 57.8% positive.
    lenient = GateThresholds(min_absolute=0.5, min_over_majority=0.02)
    d = decide({**metrics(0.578, 0.0, 0.73), MAJORITY_METRIC: 0.578}, None, lenient)
    assert not d.passed and [c.name for c in d.failures] == ["baseline"]
    assert "majority-class baseline 0.5780: margin +0.0000" in d.reason
    assert decide({**metrics(0.70, 0.65, 0.74), MAJORITY_METRIC: 0.578}, None, lenient).passed
    # A margin of 0 lets a model that only ties the baseline through (tests of the orchestration use it).
    assert decide({**metrics(0.578, 0.0, 0.73), MAJORITY_METRIC: 0.578}, None,
                  GateThresholds(min_absolute=0.5, min_over_majority=0.0)).passed  # fmt: skip


def test_lower_is_better_metric_flips_the_comparisons() -> None:
    t = GateThresholds(metric="log_loss", min_absolute=0.7, min_improvement=0.0)
    champ = {"log_loss": 0.5, LATENCY_METRIC: 1.0}
    assert decide({"log_loss": 0.4, LATENCY_METRIC: 1.0}, champ, t).passed
    assert not decide({"log_loss": 0.6, LATENCY_METRIC: 1.0}, champ, t).passed


def test_missing_metric_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="candidate's metrics have no 'accuracy'"):
        decide({"macro_f1": 0.9}, None, T)
