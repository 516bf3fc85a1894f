"""Prometheus metrics of one serving replica, exposed at ``GET /metrics``.

Each replica keeps its own :class:`prometheus_client.CollectorRegistry` (not the process-global one, so that
two services in one process, as in tests, do not collide). With several replicas, ``/metrics`` answers for the
replica that served the scrape; Ray's own per-deployment metrics (``ray_serve_*``, including
``ray_serve_batch_size``) are exported for the whole cluster on each node's metrics-export port.

Metric names (all prefixed ``bertops_serving_``):

- ``requests_total{route, status}``: HTTP requests answered, by status code.
- ``errors_total{route, reason}``: requests refused or failed (``bad_request``, ``too_large``, ``not_ready``,
  ``internal``).
- ``request_latency_seconds{route}``: histogram of handling time inside the replica.
- ``batch_texts``: histogram of texts per model call (dynamic batching at work when > 1).
- ``batch_requests``: histogram of requests merged into one model call.
- ``model_info{model, version}``: 1 for the version being served.
- ``model_switches_total{model, outcome}``: alias changes followed (``switched``), refused (``failed``), or
  passed over by a poll because that version failed before (``skipped``: no retry on every poll).

A candidate on live traffic adds its shadow and canary figures to the same registry
(:class:`bertops.serving.live.LiveMetrics`).
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PREFIX = "bertops_serving"


class ServingMetrics:
    """The replica's counters and histograms, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_errors", "Requests refused or failed", ["route", "reason"], registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds", "Request handling time in the replica", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_texts = Histogram(
            f"{PREFIX}_batch_texts", "Texts per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests merged into one model call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info", "1 for the version served", ["model", "version"], registry=r
        )
        self.switches = Counter(
            f"{PREFIX}_model_switches", "Alias changes followed or refused", ["model", "outcome"], registry=r
        )

    def observe_request(self, route: str, status: int, seconds: float, reason: str | None = None) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if reason is not None:
            self.errors.labels(route=route, reason=reason).inc()

    def observe_batch(self, n_requests: int, n_texts: int) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_texts.observe(n_texts)

    def model_switched(self, old: Any, new: Any) -> None:
        if old is not None:
            self.model_info.remove(old.name, old.version)
        self.model_info.labels(model=new.name, version=new.version).set(1)
        self.switches.labels(model=new.name, outcome="switched").inc()

    def switch_failed(self, version: str | None, error: str, model: str = "") -> None:
        self.switches.labels(model=model, outcome="failed").inc()

    def switch_skipped(self, version: str, model: str = "") -> None:
        self.switches.labels(model=model, outcome="skipped").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
