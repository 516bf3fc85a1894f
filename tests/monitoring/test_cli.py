"""``bertops monitor``: the latest report as a table with the HTML path; a clear message when there is none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from bertops.cli import app
from bertops.monitoring import drift
from bertops.monitoring.report import build_report, write_report
from bertops.monitoring.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_monitor_prints_the_latest_report(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    checks = [
        drift.Check("embedding", 0.02, 0.004, True, {"n": 300}, {"n": 200}),
        drift.skipped("unk_rate", "no pieces"),
    ]
    report = build_report(
        checks, 1.0, created_at="2026-12-01T10:00:00+00:00", model="bert-sentiment", champion_version="4",
        window_start="2026-12-01T09:00:00+00:00", window_end="2026-12-01T10:00:00+00:00", n_current=200,
        n_reference=300, served_versions=["4"], drift_threshold=0.4, min_samples=100, drifted=True,
        triggered=True, feedback={"n": 60, "accuracy": 0.75},
    )  # fmt: skip
    write_report(store, report, datetime(2026, 12, 1, 10, tzinfo=UTC))
    args = [
        "monitor",
        "--params",
        str(REPO_ROOT / "params.yaml"),
        "--set",
        f"monitoring.store_uri={store.base}",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "bert-sentiment v4" in result.output and "retrain triggered" in result.output
    assert "embedding" in result.output and "0.004" in result.output and "no pieces" in result.output
    assert "accuracy 0.750" in result.output and report.html_path in result.output.replace("\n", "")


def test_monitor_without_a_report_says_so(tmp_path: Path) -> None:
    args = [
        "monitor",
        "--params",
        str(REPO_ROOT / "params.yaml"),
        "--set",
        f"monitoring.store_uri={tmp_path}",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "bertops monitor --check" in result.output
