"""The statistics of the drift check: two-sample tests between the reference (the champion's training data)
and the recent window (what the service served). Pure functions on arrays; :mod:`bertops.monitoring.check`
does the I/O.

| check | what | test |
|---|---|---|
| ``embedding`` | the champion's pooled representations | MMD² with an RBF kernel (median heuristic), permutation p-value |
| ``length`` | word pieces per text (characters when no tokenizer) | Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) |
| ``unk_rate`` | share of ``[UNK]`` word pieces | chi-squared on the 2x2 counts (``scipy.stats.chi2_contingency``) |
| ``prediction`` | predicted label counts | chi-squared on the label x side table |
| ``confidence`` | probability of the predicted label | Kolmogorov-Smirnov |

A check *drifts* when its p-value is below ``monitoring.significance``; the **drift score** is the share of the
checks that ran and drifted. Evidently (0.7.23: fails to import with pandas 3) and alibi-detect (0.13.0: pins
numpy<2, pandas<3, transformers 4) do not install into this environment; scipy's tests are the well-kept
library here, and MMD with a permutation test is the one statistic written out (as in alibi-detect's MMDDrift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Check:
    """One two-sample comparison; ``p_value`` None when it could not run (``skipped`` says why)."""

    name: str
    statistic: float | None
    p_value: float | None
    drifted: bool
    reference: dict[str, Any] = field(default_factory=dict)  # summary figures of each side
    current: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def skipped(name: str, why: str) -> Check:
    return Check(name, None, None, False, skipped=why)


def rbf_mmd2(kernel: np.ndarray, n: int) -> float:
    """Biased MMD² from the joint kernel matrix whose first ``n`` rows/columns are one sample."""
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> tuple[float, float]:
    """MMD² of samples ``x`` (n, d) and ``y`` (m, d) and its permutation p-value."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.maximum((z**2).sum(1)[:, None] + (z**2).sum(1)[None, :] - 2 * z @ z.T, 0.0)  # (n+m, n+m)
    positive = sq[np.triu_indices_from(sq, k=1)]
    positive = positive[positive > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0  # median heuristic on squared distances
    kernel = np.exp(-sq / bandwidth)
    n = len(x)
    observed = rbf_mmd2(kernel, n)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        order = rng.permutation(len(z))
        hits += rbf_mmd2(kernel[np.ix_(order, order)], n) >= observed
    return observed, (1 + hits) / (1 + permutations)


def embedding_check(ref: np.ndarray, cur: np.ndarray, alpha: float, permutations: int) -> Check:
    if len(ref) < 2 or len(cur) < 2:
        return skipped("embedding", f"too few texts (reference {len(ref)}, current {len(cur)})")
    stat, p = mmd_test(ref, cur, permutations)
    return Check("embedding", stat, p, p < alpha, {"n": len(ref)}, {"n": len(cur)})


def ks_check(name: str, ref: Sequence[float], cur: Sequence[float], alpha: float) -> Check:
    from scipy.stats import ks_2samp

    a, b = np.asarray(ref, dtype=float), np.asarray(cur, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return skipped(name, f"no values (reference {len(a)}, current {len(b)})")
    result = ks_2samp(a, b)
    p = float(result.pvalue)
    return Check(name, float(result.statistic), p, p < alpha, _summary(a), _summary(b))


def rate_check(
    name: str, ref_hits: int, ref_total: int, cur_hits: int, cur_total: int, alpha: float
) -> Check:
    """Two proportions (e.g. [UNK] pieces among all pieces) compared with a chi-squared test."""
    from scipy.stats import chi2_contingency

    if ref_total == 0 or cur_total == 0:
        return skipped(name, f"no pieces (reference {ref_total}, current {cur_total})")
    sides = ({"rate": ref_hits / ref_total, "n": ref_total}, {"rate": cur_hits / cur_total, "n": cur_total})
    table = np.array([[ref_hits, ref_total - ref_hits], [cur_hits, cur_total - cur_hits]])
    if (table.sum(0) == 0).any():  # the same all-or-nothing rate on both sides: nothing to tell apart
        return Check(name, 0.0, 1.0, False, *sides)
    stat, p, _, _ = chi2_contingency(table)
    return Check(name, float(stat), float(p), float(p) < alpha, *sides)


def counts_check(name: str, ref: Sequence[str], cur: Sequence[str], alpha: float) -> Check:
    """Category counts (predicted labels) of the two sides, chi-squared on the category x side table."""
    from scipy.stats import chi2_contingency

    if not ref or not cur:
        return skipped(name, f"no values (reference {len(ref)}, current {len(cur)})")
    cats = sorted(set(ref) | set(cur))
    table = np.array([[list(ref).count(c) for c in cats], [list(cur).count(c) for c in cats]])
    shares = [{c: int(v) / max(int(row.sum()), 1) for c, v in zip(cats, row, strict=True)} for row in table]
    if len(cats) < 2:
        return Check(name, 0.0, 1.0, False, shares[0], shares[1])
    stat, p, _, _ = chi2_contingency(table)
    return Check(name, float(stat), float(p), float(p) < alpha, shares[0], shares[1])


def drift_score(checks: Sequence[Check]) -> float:
    """The share of the checks that ran and drifted (0 when none ran)."""
    ran = [c for c in checks if c.p_value is not None]
    return sum(c.drifted for c in ran) / len(ran) if ran else 0.0


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "p50": float(np.median(values)),
        "p90": float(np.quantile(values, 0.9)),
    }
