"""The drift check end to end: the recent window of served records against the champion's training data.

    report = run_check(load_config("params.yaml"))   # what bert_monitor and `bertops monitor --check` run
    report.triggered                                  # drift score >= drift_threshold with >= min_samples texts

Steps: resolve ``models:/<registry.model_name>@champion``, load its bundle (cached per version), draw
``monitoring.reference_samples`` texts of its data's ``monitoring.reference_split`` (default
``data/split/classification/validation.jsonl`` of the checkout the check runs in: held out from training), read the window's records and feedback from the store, run the checks of
:mod:`bertops.monitoring.drift`, write the report (:mod:`bertops.monitoring.report`) and log it to MLflow
(experiment ``monitoring.experiment``: metrics, the JSON and HTML as artifacts, tags naming the champion
version); the champion version gets the tag ``bertops.drift_run_id``.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bertops.config import BertopsConfig, load_config
from bertops.monitoring import drift
from bertops.monitoring.features import text_features
from bertops.monitoring.report import DriftReport, build_report, render_html, update_latest, write_report
from bertops.monitoring.store import FEEDBACK, RECORDS, Store, store_uri
from bertops.orchestration.tasks import PARAMS_FILE, project_root
from bertops.paths import DataLayout
from bertops.tracking_client import connect

log = logging.getLogger(__name__)

DRIFT_RUN_TAG = "bertops.drift_run_id"
CACHE = "monitoring-cache"


class MonitoringError(RuntimeError):
    """The check cannot run (no champion, no training split); the message says what is missing."""


@dataclass
class Side:
    """What the checks compare on one side (reference or current)."""

    texts: list[str]  # those with text (embedding check)
    lengths: list[float]
    unk: int
    pieces: int
    labels: list[str]
    confidences: list[float]


def run_check(cfg: BertopsConfig, root: Path | None = None, now: datetime | None = None) -> DriftReport:
    """Compare the window ending ``now`` with the champion's training data; write and log the report."""
    root = (root or Path.cwd()).resolve()
    now = now or datetime.now(UTC)
    m = cfg.monitoring
    store = Store(store_uri(cfg, root))
    since = now - timedelta(hours=m.window_hours)
    name = cfg.registry.model_name
    version = champion_version(cfg, name)
    bundle = champion_bundle(cfg, root, name, version)
    ref_file = root / DataLayout(root=Path(cfg.project.data_dir)).split_file(
        "classification", m.reference_split
    )
    ref_texts = reference_texts(ref_file, m.reference_samples, cfg.project.seed)
    records = [r for r in _rows(store.read(RECORDS, since)) if r["model"] == name and r["time"] <= now]
    use_pieces = bool(records) and all(r["n_pieces"] is not None for r in records)
    reference = reference_side(bundle, ref_texts, use_pieces)
    current = current_side(records, use_pieces, limit=m.reference_samples)
    checks = compare(bundle, reference, current, m.significance, m.permutations)
    score = drift.drift_score(checks)
    drifted = bool(records) and score >= m.drift_threshold
    report = build_report(
        checks, score, created_at=now.isoformat(timespec="seconds"), model=name, champion_version=version,
        window_start=since.isoformat(timespec="seconds"), window_end=now.isoformat(timespec="seconds"),
        n_current=len(records), n_reference=len(ref_texts),
        served_versions=sorted({str(r["version"]) for r in records}),
        drift_threshold=m.drift_threshold, min_samples=m.min_samples, drifted=drifted,
        triggered=drifted and len(records) >= m.min_samples,
        feedback=feedback_accuracy(records, _rows(store.read(FEEDBACK, since))),
        reference_source=str(ref_file.relative_to(root) if ref_file.is_relative_to(root) else ref_file),
    )  # fmt: skip
    write_report(store, report, now)
    report.mlflow_run_id = log_report(cfg, report)
    update_latest(store, report)
    log.info("drift check of %s v%s: score %.2f over %d texts (%s)", name, version, score, len(records),
             "triggered" if report.triggered else "not triggered")  # fmt: skip
    return report


# ------------------------------------------------------------------------------------------- champion
def champion_version(cfg: BertopsConfig, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(connect(cfg.tracking_uri()).get_model_version_by_alias(name, "champion").version)
    except MlflowException as exc:
        raise MonitoringError(
            f"no champion of {name!r} at {cfg.tracking_uri()} ({exc.message}): promote a version first"
        ) from None


def champion_bundle(cfg: BertopsConfig, root: Path, name: str, version: str) -> Any:
    """The champion's bundle (downloaded once per version into ``<state_dir>/monitoring-cache``)."""
    import mlflow

    from bertops.model.bundle import load_bundle
    from bertops.model.pyfunc_common import BUNDLE_ARTIFACT

    state = cfg.state_dir if cfg.state_dir.is_absolute() else root / cfg.state_dir
    target = state / CACHE / f"{name}-{version}"
    bundle_dir = target / "artifacts" / BUNDLE_ARTIFACT
    if not bundle_dir.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(cfg.tracking_uri())
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
            if not (local / "artifacts" / BUNDLE_ARTIFACT).is_dir():
                raise MonitoringError(f"models:/{name}/{version} holds no bertops bundle (artifacts/bundle)")
            (local / "artifacts").rename(target / "artifacts")
    return load_bundle(bundle_dir)


def pooled_embeddings(bundle: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The champion backbone's ``pooled_output`` of each text: (n, hidden)."""
    backbone = bundle.model.backbone
    chunks = [
        np.asarray(backbone(bundle.encode(texts[i : i + batch_size]), training=False)["pooled_output"])
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)


# ------------------------------------------------------------------------------------------- sides
def reference_texts(path: Path, n: int, seed: int) -> list[str]:
    if not path.is_file():
        raise MonitoringError(f"{path}: no training split to compare with (run `dvc repro split` first)")
    texts = []
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError) as exc:
                raise MonitoringError(f"{path}:{row}: not a record with 'text' ({exc})") from None
    random.Random(seed).shuffle(texts)
    return texts[:n]


def reference_side(bundle: Any, texts: list[str], use_pieces: bool) -> Side:
    feats = text_features(texts, bundle.tokenizer)
    probs = bundle.predict_proba(texts) if texts else np.zeros((0, len(bundle.labels or [])))
    labels = bundle.labels or []
    return Side(
        texts=texts,
        lengths=[float(f.n_pieces if use_pieces else f.n_chars) for f in feats],
        unk=sum(f.n_unk or 0 for f in feats),
        pieces=sum(f.n_pieces or 0 for f in feats),
        labels=[labels[i] for i in probs.argmax(axis=1)] if len(probs) else [],
        confidences=[float(p) for p in probs.max(axis=1)] if len(probs) else [],
    )


def current_side(records: list[dict[str, Any]], use_pieces: bool, limit: int) -> Side:
    with_pieces = [r for r in records if r["n_pieces"] is not None]
    return Side(
        texts=[r["text"] for r in records if r["text"] is not None][-limit:],
        lengths=[float(r["n_pieces"] if use_pieces else r["n_chars"]) for r in records],
        unk=sum(r["n_unk"] or 0 for r in with_pieces),
        pieces=sum(r["n_pieces"] for r in with_pieces),
        labels=[r["label"] for r in records if r["label"] is not None],
        confidences=[r["confidence"] for r in records if r["confidence"] is not None],
    )


def compare(bundle: Any, ref: Side, cur: Side, alpha: float, permutations: int) -> list[drift.Check]:
    if cur.texts:
        embedding = drift.embedding_check(
            pooled_embeddings(bundle, ref.texts), pooled_embeddings(bundle, cur.texts), alpha, permutations
        )
    else:
        embedding = drift.skipped(
            "embedding", "no raw text recorded (monitoring.store_text: false) or no records"
        )
    return [
        embedding,
        drift.ks_check("length", ref.lengths, cur.lengths, alpha),
        drift.rate_check("unk_rate", ref.unk, ref.pieces, cur.unk, cur.pieces, alpha)
        if cur.pieces
        else drift.skipped(
            "unk_rate", "no word-piece counts recorded (the model's tokenizer was not reachable)"
        ),
        drift.counts_check("prediction", ref.labels, cur.labels, alpha),
        drift.ks_check("confidence", ref.confidences, cur.confidences, alpha),
    ]


def feedback_accuracy(records: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of the served predictions that got a feedback label (the latest label per text counts)."""
    truth = {(f["request_id"], f["index"]): f["label"] for f in feedback if f["label"] is not None}
    pairs = [
        (r["label"], truth[(r["request_id"], r["index"])])
        for r in records
        if (r["request_id"], r["index"]) in truth
    ]
    if not pairs:
        return {"n": 0, "accuracy": None}
    return {"n": len(pairs), "accuracy": sum(p == t for p, t in pairs) / len(pairs)}


def _rows(table: Any) -> list[dict[str, Any]]:
    return [] if table is None else table.to_pylist()


# ------------------------------------------------------------------------------------------- MLflow
def log_report(cfg: BertopsConfig, report: DriftReport) -> str:
    """One MLflow run per check, tagged with the champion version; returns its run id."""
    client = connect(cfg.tracking_uri())
    experiment = client.get_experiment_by_name(cfg.monitoring.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(cfg.monitoring.experiment)
    )
    tags = {"bertops.model_name": report.model, "bertops.model_version": str(report.champion_version),
            "bertops.drifted": str(report.drifted).lower(), "bertops.triggered": str(report.triggered).lower(),
            "bertops.drift_report": str(report.json_path)}  # fmt: skip
    run = client.create_run(experiment_id, run_name=f"drift-{report.created_at}", tags=tags)
    run_id = run.info.run_id
    for key, value in report.metrics().items():
        client.log_metric(run_id, key, value)
    for key in ("window_start", "window_end", "drift_threshold", "min_samples"):
        client.log_param(run_id, key, getattr(report, key))
    with tempfile.TemporaryDirectory() as tmp:
        report.mlflow_run_id = run_id
        (Path(tmp) / "drift.json").write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        (Path(tmp) / "drift.html").write_text(render_html(report), encoding="utf-8")
        client.log_artifacts(run_id, tmp, artifact_path="drift_report")
    client.set_terminated(run_id)
    if report.champion_version:
        client.set_model_version_tag(report.model, report.champion_version, DRIFT_RUN_TAG, run_id)
    return run_id


def check_now(root: Path | None = None) -> dict[str, Any]:
    """The ``bert_monitor`` task: the check for the checkout's ``params.yaml``; small figures for XCom."""
    root = root or project_root()
    report = run_check(load_config(root / PARAMS_FILE), root=root)
    keys = ("model", "champion_version", "n_current", "drift_score", "drift_threshold", "min_samples",
            "drifted", "triggered", "json_path", "html_path", "mlflow_run_id")  # fmt: skip
    return {k: getattr(report, k) for k in keys}
