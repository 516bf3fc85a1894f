"""A drift check's report: one JSON (the figures) and one HTML page (the same, for people), in the store.

report = latest_report(Store(store_uri(cfg)))     # what `bertops monitor` prints
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from bertops.monitoring.drift import Check
from bertops.monitoring.store import LATEST, REPORTS, Store, stamp


@dataclass
class DriftReport:
    """What one drift check found. ``triggered``: drifted with at least ``min_samples`` texts in the window."""

    created_at: str
    model: str
    champion_version: str | None
    window_start: str
    window_end: str
    n_current: int
    n_reference: int
    served_versions: list[str]
    checks: list[dict[str, Any]]
    drift_score: float
    drift_threshold: float
    min_samples: int
    drifted: bool
    triggered: bool
    feedback: dict[str, Any] = field(default_factory=dict)  # n, accuracy of the labelled requests
    reference_source: str = ""
    json_path: str | None = None
    html_path: str | None = None
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics: ``drift_score``, ``n_current``, ``<check>_p_value``/``_statistic``,
        ``unk_rate_current``, ``feedback_accuracy`` ..."""
        out = {"drift_score": self.drift_score, "n_current": float(self.n_current),
               "n_reference": float(self.n_reference), "drifted": float(self.drifted)}  # fmt: skip
        for c in self.checks:
            if c["p_value"] is not None:
                out[f"{c['name']}_p_value"] = float(c["p_value"])
                out[f"{c['name']}_statistic"] = float(c["statistic"])
            for side in ("reference", "current"):
                for key, value in c.get(side, {}).items():
                    if key in ("rate", "mean") and isinstance(value, int | float):
                        out[f"{c['name']}_{key}_{side}"] = float(value)
        if self.feedback.get("accuracy") is not None:
            out["feedback_accuracy"] = float(self.feedback["accuracy"])
            out["feedback_n"] = float(self.feedback["n"])
        return out


def build_report(checks: list[Check], score: float, **fields: Any) -> DriftReport:
    return DriftReport(checks=[c.to_dict() for c in checks], drift_score=score, **fields)


def render_html(report: DriftReport) -> str:
    """A self-contained page: the verdict, then one row per check."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{_fmt(c['statistic'])}</td><td>{_fmt(c['p_value'])}</td>"
        f"<td>{'yes' if c['drifted'] else 'no'}</td><td>{e(json.dumps(c['reference']))}</td>"
        f"<td>{e(json.dumps(c['current']))}</td><td>{e(c['skipped'] or '')}</td></tr>"
        for c in report.checks
    )
    verdict = (
        "DRIFT: retrain triggered"
        if report.triggered
        else ("drift (too few samples)" if report.drifted else "no drift")
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bertops drift report {e(report.created_at)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;font-size:90%}}</style>
</head><body><h1>Drift report: {e(report.model)} v{e(str(report.champion_version))}</h1>
<p><b>{e(verdict)}</b>: drift score {report.drift_score:.2f} (threshold {report.drift_threshold}), {report.n_current} served texts
in {e(report.window_start)} .. {e(report.window_end)} (at least {report.min_samples} needed), {report.n_reference} reference texts
from {e(report.reference_source)}. Served versions: {e(", ".join(report.served_versions))}.</p>
<p>Feedback: {e(json.dumps(report.feedback))}</p>
<table><tr><th>check</th><th>statistic</th><th>p-value</th><th>drifted</th><th>reference</th><th>current</th><th>skipped</th></tr>
{rows}</table></body></html>
"""


def write_report(store: Store, report: DriftReport, when: datetime) -> DriftReport:
    """Write ``reports/<stamp>/drift.{json,html}`` and ``reports/latest.json``; the report learns its paths."""
    folder = stamp(when)
    report.json_path = store.path(REPORTS, folder, "drift.json")
    report.html_path = store.write_text(render_html(report), REPORTS, folder, "drift.html")
    text = json.dumps(report.to_dict(), indent=1)
    store.write_text(text, REPORTS, folder, "drift.json")
    store.write_text(text, REPORTS, LATEST)
    return report


def update_latest(store: Store, report: DriftReport) -> None:
    """Rewrite the report's JSON files (e.g. once its MLflow run id is known)."""
    text = json.dumps(report.to_dict(), indent=1)
    if report.json_path:
        store.write_text(text, *report.json_path[len(store.base.rstrip("/")) + 1 :].split("/"))
    store.write_text(text, REPORTS, LATEST)


def latest_report(store: Store) -> DriftReport | None:
    data = store.read_json(REPORTS, LATEST)
    return DriftReport(**data) if data else None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
