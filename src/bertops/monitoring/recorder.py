"""What the service served, recorded off the request path: sampled, bounded, written by a background thread.

A replica makes one :class:`Recorder` (``Recorder.from_settings``); after each answered request it calls
:meth:`Recorder.record`, which only samples the texts and puts one item on a bounded queue (``put_nowait``):
it never waits. A writer thread wakes when ``segment_records`` texts are waiting or every
``flush_interval_s``, drains the queue, computes the derived features (:mod:`bertops.monitoring.features`)
and writes Parquet segments to the store (:mod:`bertops.monitoring.store`). When the queue is full the writer
is behind: the new request's texts are dropped and counted, never queued behind a lock.

Prometheus (the replica's registry, ``GET /metrics``): ``bertops_monitoring_texts_total{outcome}`` with outcome
``queued``, ``dropped`` (queue full), ``not_sampled`` (sample rate or hourly cap), ``written``;
``bertops_monitoring_write_errors_total``; ``bertops_monitoring_feedback_total{outcome}`` (``queued``,
``dropped``, ``written``).

Record columns (one row per text): ``time``, ``request_id``, ``index`` (the text's position in its request),
``model``, ``version``, ``task``, ``label``, ``confidence`` (a classifier's probability of its label; an NER
model's mean entity score), ``n_entities``, ``n_chars``, ``n_words``, ``n_pieces``, ``n_unk`` and ``text``
(null with ``monitoring.store_text: false``: the raw text then never leaves the replica's memory).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from bertops.config import BertopsConfig
from bertops.monitoring.features import model_tokenizer, text_features
from bertops.monitoring.store import FEEDBACK, RECORDS, Store, store_uri

log = logging.getLogger(__name__)

PREFIX = "bertops_monitoring"


class RecorderSettings(BaseModel):
    """The part of ``monitoring`` a replica needs (``store_uri`` already resolved to an absolute location)."""

    enabled: bool = True
    store_uri: str
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    max_records_per_hour: int = Field(default=100_000, ge=0)
    store_text: bool = True
    queue_size: int = Field(default=10_000, ge=1)
    segment_records: int = Field(default=1_000, ge=1)
    flush_interval_s: float = Field(default=60, gt=0)


def settings_from_config(cfg: BertopsConfig, root: Any | None = None) -> dict[str, Any]:
    """The replica's recorder settings (plain data, for the deployment's arguments) from ``monitoring``."""
    m = cfg.monitoring
    fields = ("enabled", "sample_rate", "max_records_per_hour", "store_text", "queue_size", "segment_records",
              "flush_interval_s")  # fmt: skip
    return RecorderSettings(store_uri=store_uri(cfg, root), **{f: getattr(m, f) for f in fields}).model_dump()


def record_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ms", tz="UTC")), ("request_id", pa.string()), ("index", pa.int32()),
        ("model", pa.string()), ("version", pa.string()), ("task", pa.string()),
        ("label", pa.string()), ("confidence", pa.float64()), ("n_entities", pa.int32()),
        ("n_chars", pa.int32()), ("n_words", pa.int32()), ("n_pieces", pa.int32()), ("n_unk", pa.int32()),
        ("text", pa.string()),
    ])  # fmt: skip


def feedback_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ms", tz="UTC")), ("request_id", pa.string()), ("index", pa.int32()),
        ("label", pa.string()), ("entities", pa.string()),
    ])  # fmt: skip


@dataclass
class _Served:
    """One answered request, as queued: the texts kept by sampling and their predictions."""

    time: datetime
    request_id: str
    model: Any  # LoadedModel: name, version, task, pyfunc
    indices: list[int]
    texts: list[str]
    predictions: list[dict[str, Any]]


class Recorder:
    """Samples served texts onto a bounded queue; a daemon thread writes them as Parquet segments."""

    def __init__(self, settings: RecorderSettings, registry: Any | None = None, start: bool = True) -> None:
        from prometheus_client import Counter

        self.settings = settings
        self.store = Store(settings.store_uri)
        self.writer_id = uuid.uuid4().hex[:8]
        self._queue: queue.Queue[_Served] = queue.Queue(maxsize=settings.queue_size)
        self._feedback: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.queue_size)
        self._waiting = 0  # texts queued since the writer last drained (a hint, not exact)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._write_lock = threading.Lock()
        self._hour, self._hour_count = "", 0
        self._random = random.Random()
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self.texts = Counter(
            f"{PREFIX}_texts", "Served texts by recording outcome", ["outcome"], registry=registry
        )
        self.feedback_count = Counter(
            f"{PREFIX}_feedback", "Feedback labels by outcome", ["outcome"], registry=registry
        )
        self.write_errors = Counter(
            f"{PREFIX}_write_errors", "Segments that failed to write", registry=registry
        )
        self._thread = threading.Thread(target=self._run, name="bertops-monitoring-writer", daemon=True)
        if start and settings.enabled:
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: dict[str, Any], registry: Any | None = None) -> Recorder:
        return cls(RecorderSettings.model_validate(settings), registry=registry)

    # ------------------------------------------------------------------------------ request path
    def record(self, request_id: str, model: Any, texts: Sequence[str], predictions: Sequence[dict]) -> int:
        """Queue the sampled texts of one answered request; returns how many were queued. Never blocks."""
        if not self.settings.enabled or not texts:
            return 0
        keep = [i for i in range(len(texts)) if self._sampled()]
        if len(keep) < len(texts):
            self.texts.labels(outcome="not_sampled").inc(len(texts) - len(keep))
        if not keep:
            return 0
        item = _Served(datetime.now(UTC), request_id, model, keep, [texts[i] for i in keep],
                       [predictions[i] for i in keep])  # fmt: skip
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.texts.labels(outcome="dropped").inc(len(keep))
            return 0
        self.texts.labels(outcome="queued").inc(len(keep))
        self._waiting += len(keep)
        if self._waiting >= self.settings.segment_records:
            self._wake.set()
        return len(keep)

    def feedback(self, request_id: str, index: int, label: str | None, entities: str | None) -> bool:
        """Queue one feedback row (``entities`` as JSON text); False when monitoring is off or the queue is full."""
        if not self.settings.enabled:
            return False
        row = {"time": datetime.now(UTC), "request_id": request_id, "index": index, "label": label,
               "entities": entities}  # fmt: skip
        try:
            self._feedback.put_nowait(row)
        except queue.Full:
            self.feedback_count.labels(outcome="dropped").inc()
            return False
        self.feedback_count.labels(outcome="queued").inc()
        return True

    def _sampled(self) -> bool:
        hour = datetime.now(UTC).strftime("%Y%m%d%H")
        if hour != self._hour:
            self._hour, self._hour_count = hour, 0
        if self._hour_count >= self.settings.max_records_per_hour:
            return False
        if self.settings.sample_rate < 1 and self._random.random() >= self.settings.sample_rate:
            return False
        self._hour_count += 1
        return True

    # ------------------------------------------------------------------------------ writer
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self.settings.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a failing store must not kill the writer: count it, log it, keep going
                self.write_errors.inc()
                log.exception("monitoring: writing a segment to %s failed", self.settings.store_uri)

    def flush(self) -> int:
        """Drain both queues and write what they held now (the writer does this on its own); returns the
        number of record rows written."""
        with self._write_lock:
            served = _drain(self._queue)
            feedback = _drain(self._feedback)
            self._waiting = 0
            written = 0
            for start in range(0, len(served), self.settings.segment_records):
                chunk = served[start : start + self.settings.segment_records]
                rows = [row for item in chunk for row in self._rows(item)]
                self._write(RECORDS, rows, record_schema())
                written += len(rows)
            self.texts.labels(outcome="written").inc(written)
            if feedback:
                self._write(FEEDBACK, feedback, feedback_schema())
                self.feedback_count.labels(outcome="written").inc(len(feedback))
            return written

    def _write(self, kind: str, rows: list[dict[str, Any]], schema: Any) -> None:
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.store.write_segment(kind, table, rows[0]["time"], self.writer_id)
        log.debug("monitoring: wrote %d %s rows to %s", len(rows), kind, path)

    def _rows(self, item: _Served) -> list[dict[str, Any]]:
        model = item.model
        task = str(getattr(model, "task", "classification"))
        features = text_features(item.texts, self._tokenizer(model))
        rows = []
        for index, text, prediction, feats in zip(
            item.indices, item.texts, item.predictions, features, strict=True
        ):
            label, confidence, n_entities = _outcome(task, prediction)
            rows.append({
                "time": item.time, "request_id": item.request_id, "index": index,
                "model": str(model.name), "version": str(model.version), "task": task,
                "label": label, "confidence": confidence, "n_entities": n_entities,
                "n_chars": feats.n_chars, "n_words": feats.n_words, "n_pieces": feats.n_pieces,
                "n_unk": feats.n_unk, "text": text if self.settings.store_text else None,
            })  # fmt: skip
        return rows

    def _tokenizer(self, model: Any) -> Any | None:
        key = (str(model.name), str(model.version))
        if key not in self._tokenizers:
            self._tokenizers[key] = model_tokenizer(getattr(model, "pyfunc", None))
        return self._tokenizers[key]

    def close(self, timeout: float = 30) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        self.flush()


def _drain(q: queue.Queue) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _outcome(task: str, prediction: dict[str, Any]) -> tuple[str | None, float | None, int | None]:
    """(label, confidence, n_entities) of one prediction."""
    if task == "ner":
        entities = prediction.get("entities") or []
        scores = [float(e.get("score", 0.0)) for e in entities]
        return None, (sum(scores) / len(scores) if scores else None), len(entities)
    return str(prediction.get("label")), float(prediction.get("probability", 0.0)), None
