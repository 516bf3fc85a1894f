"""The Ray Serve application that serves the registered champions over HTTP (FastAPI ingress).

Routes (under ``serving.route_prefix``): ``POST /predict`` (the default model, ``registry.model_name``),
``POST /models/{name}/predict`` (every served model, ``serving.models``: by default the classifier and the
NER model, each following its own alias), ``GET /healthz``, ``GET /readyz``, ``GET /metadata`` (every served
model), ``GET /metrics`` (Prometheus), ``POST /admin/reload`` (loopback callers only), OpenAPI docs at
``/docs``. A classifier answers each text with its label and probabilities, an NER model with its
``entities``; the response shape is otherwise the same (``model``, ``version``, ``predictions``).

Build it from the config (what ``bertops serve`` does) or from an import path with arguments (what a KubeRay
``RayService`` or ``serve run`` does)::

    serve run bertops.serving.app:build_app params=params.yaml
    # RayService: import_path: bertops.serving.app:build_app, args: {params: /app/params.yaml,
    #             set: ["tracking.uri=http://mlflow:5000"]}

Dynamic batching: every request is one item of a ``@serve.batch`` queue whose size is counted in *texts*
(``batch_size_fn``), so a model call gets up to ``serving.max_batch_size`` texts gathered from concurrent
requests within ``serving.batch_wait_timeout_s``. A request with more texts than that is one model call of its
own. Requests to different models share the queue; a batch calls each model once, on its texts, and takes each
served model once, so all texts of a request are answered by one version.

This module imports Ray and FastAPI: it is the serving entry point, imported only where serving happens.
"""

# No `from __future__ import annotations`: Ray Serve and FastAPI inspect these annotations at run time.
import asyncio
import dataclasses
import functools
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from bertops.config import BertopsConfig, CanaryConfig, ShadowConfig, load_config, validate_config
from bertops.monitoring.feedback import BadFeedback, parse_feedback
from bertops.monitoring.recorder import Recorder, settings_from_config
from bertops.serving import mlflow_scoring, open_inference
from bertops.serving.batching import AdaptiveBatcher
from bertops.serving.live import CALLER_HEADER, LiveMetrics, LiveTrial
from bertops.serving.metrics import ServingMetrics
from bertops.serving.model_store import LoadedModel, ModelLoadError, ModelManager, ModelSource
from bertops.serving.schemas import (
    BadRequest,
    ErrorResponse,
    MetadataResponse,
    PredictRequest,
    PredictResponse,
    ReloadResponse,
    RequestLimits,
    check_content_length,
    check_content_type,
    parse_predict_body,
)

# A child of "ray.serve": Serve's log handlers (JSON encoding, request id, replica id) apply to our records.
logger = logging.getLogger("ray.serve.bertops")

APP_NAME = "bertops"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REQUEST_ID_HEADER = "x-request-id"
SHADOW_YIELD_S = 0.002  # how often a waiting mirrored batch looks whether the champion is idle
_SHADOW_DEFAULTS = ShadowConfig()  # the admin route's defaults: the config's
RETRY_AFTER_S = 5  # what a 503 (no version loaded yet) asks the client to wait before trying again
# Shared secret for POST /admin/reload from other hosts (from the environment / a Secret; never in params.yaml).
ADMIN_TOKEN_ENV = "BERTOPS_SERVING_ADMIN_TOKEN"


class ServiceSettings(BaseModel):
    """What one replica needs: where the model is, and the request and batching limits."""

    tracking_uri: str
    host: str = "127.0.0.1"  # where the service listens (serving.host): decides who counts as a local caller
    model_name: str  # the default model: POST /predict
    models: list[str] = Field(default_factory=list)  # every served model (the default one included)
    alias: str = "champion"
    poll_interval_s: float = Field(default=30, gt=0)
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    max_texts_per_request: int = Field(default=64, ge=1)
    max_text_bytes: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    monitoring: dict[str, Any] | None = None  # bertops.monitoring.recorder.RecorderSettings; None: off

    @classmethod
    def from_config(cls, cfg: BertopsConfig) -> "ServiceSettings":
        s = cfg.serving
        default = cfg.registry.model_name
        served = s.models if s.models is not None else [default, cfg.registry.ner_model_name]
        return cls(
            tracking_uri=cfg.tracking_uri(), host=s.host, model_name=default,
            models=list(dict.fromkeys([default, *served])), alias=s.model_alias,
            poll_interval_s=s.poll_interval_s, max_batch_size=s.max_batch_size,
            batch_wait_timeout_s=s.batch_wait_timeout_s, max_texts_per_request=s.max_texts_per_request,
            max_text_bytes=s.max_text_bytes, max_body_bytes=s.max_body_bytes,
            monitoring=settings_from_config(cfg),
        )  # fmt: skip

    @property
    def served(self) -> list[str]:
        return list(dict.fromkeys([self.model_name, *self.models]))

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_texts_per_request, self.max_text_bytes, self.max_body_bytes)


api = FastAPI(
    title="bertops serving",
    description="The registered champion BERT models. Send raw texts; a classifier answers labels and class "
    "probabilities, an NER model the entities with their character offsets.",
    version="1",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 415, 422, 503)
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def _count_texts(item: tuple[str, list[str]]) -> int:
    """Batch size in texts, not requests (``size_fn`` of the batch queue)."""
    return len(item[1])


# The helpers the service uses are defined before it: `serve.ingress` pickles the class when it is decorated,
# so names defined after it would be missing in the replica (NameError at request time).
class _NotReady(Exception):
    """No version of the model is loaded yet."""


def _token_ok(request: Request) -> bool:
    """A non-loopback caller (e.g. an Airflow worker in another pod) authenticates with a shared secret."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def _request_id(request: Request) -> str:
    # Ray's proxy puts an X-Request-ID on every request (the client's, or a fresh one) and on the response.
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def _in_serve_replica() -> bool:
    """True inside a Ray Serve replica, whose proxy already echoes X-Request-ID on every response."""
    try:
        serve.get_replica_context()
    except Exception:  # RayServeException outside a replica
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Protocol:
    """How a prediction route reads its body and shapes its answer (bertops' own, or Open Inference v2)."""

    parse: Any  # (body, limits, task) -> (texts, context)
    render: Any  # (model, predictions, context) -> JSON-able answer


NATIVE = _Protocol(
    parse=lambda body, limits, task: (parse_predict_body(body, limits), None),
    render=lambda model, predictions, context: {
        "model": model.name, "version": model.version, "predictions": predictions,
    },
)  # fmt: skip
OPEN_INFERENCE = _Protocol(
    parse=open_inference.parse_infer_request,
    render=lambda model, predictions, context: open_inference.infer_response(
        model.name, model.version, model.labels, predictions, context
    ),
)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bertops")
    except PackageNotFoundError:
        return "unknown"


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it (413) as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body is over {limit} bytes (serving.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment
@serve.ingress(api)
class BertopsService:
    """One serving replica: the served models, their switchers and pollers, the batch queue, the metrics."""

    async def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServiceSettings.model_validate(settings)
        self.metrics = ServingMetrics()
        monitoring = self.settings.monitoring or {"enabled": False, "store_uri": "."}
        self.recorder = Recorder.from_settings(monitoring, registry=self.metrics.registry)
        managers = {
            name: ModelManager(
                ModelSource(self.settings.tracking_uri, name, self.settings.alias),
                on_switch=self.metrics.model_switched,
                on_failure=functools.partial(self.metrics.switch_failed, model=name),
                on_skip=functools.partial(self.metrics.switch_skipped, model=name),
                preloaded=functools.partial(self._preloaded, name),
            )
            for name in self.settings.served
        }
        self._setup(managers, behind_proxy=_in_serve_replica())
        # A replica without a model starts (readyz says 503) and keeps polling: promoting a first champion
        # later is enough to bring it up, with no redeploy.
        for name, manager in self.managers.items():
            result = await manager.refresh()
            logger.info("start-up %s: %s", name, result.message)
        loop = asyncio.get_running_loop()
        self._pollers = [
            loop.create_task(m.poll(self.settings.poll_interval_s)) for m in self.managers.values()
        ]

    def _setup(self, managers: dict[str, ModelManager], behind_proxy: bool) -> None:
        """The replica's request-path state (also what the in-process tests build around their own managers)."""
        self.managers = managers
        self.manager = managers[self.settings.model_name]  # the default model
        self.limits = self.settings.limits
        self._behind_proxy = behind_proxy
        self._model_call = asyncio.Lock()  # one model call at a time per replica: it uses every core anyway
        self.trials: dict[str, LiveTrial] = {}  # a candidate beside a champion (bertops.serving.live)
        self.live_metrics = LiveMetrics(self.metrics.registry)
        self.batcher = AdaptiveBatcher(
            self._predict_batch, max_size=self.settings.max_batch_size, size_fn=_count_texts,
            extra_wait_s=self.settings.batch_wait_timeout_s,
        )  # fmt: skip

    def check_health(self) -> None:
        """Ray Serve's replica health check: the replica is unhealthy when a poller died."""
        for poller in self._pollers:
            if poller.done() and not poller.cancelled():
                raise RuntimeError(f"model poller stopped: {poller.exception()!r}")

    # ------------------------------------------------------------------------------------ model calls
    async def _predict_batch(
        self, items: list[tuple[str, list[str]]]
    ) -> list[tuple[LoadedModel, list[dict[str, Any]]] | Exception]:
        """One batch of the queue: each model called once on its texts (see AdaptiveBatcher)."""
        # Each model is taken once: every request of this batch to it is answered by one version.
        models = {name: self.managers[name].current for name, _ in items}
        answers: dict[str, list[dict[str, Any]]] = {}
        for name, model in models.items():
            if model is None:
                continue
            flat = [text for n, texts in items if n == name for text in texts]
            async with self._model_call:
                answers[name] = await asyncio.to_thread(model.predict, flat)
            self.metrics.observe_batch(sum(n == name for n, _ in items), len(flat))
        out: list[tuple[LoadedModel, list[dict[str, Any]]] | Exception] = []
        start = dict.fromkeys(answers, 0)
        for name, texts in items:
            model = models[name]
            if model is None:
                out.append(_NotReady(name))  # returned, not raised: the other requests of the batch go on
                continue
            out.append((model, answers[name][start[name] : start[name] + len(texts)]))
            start[name] += len(texts)
        return out

    async def _predict(self, name: str, texts: list[str]) -> tuple[LoadedModel, list[dict[str, Any]]]:
        """The predictions for one request's texts, all from one version (a request is never split)."""
        return await self.batcher.submit((name, texts))

    # ---------------------------------------------------------------------------------------- routes
    @api.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=_PREDICT_BODY)
    async def predict(self, request: Request) -> Response:
        """The default model on ``{"texts": [...]}``: label, its probability and every class probability, per text."""
        return await self._serve(request, self.settings.model_name, "/predict")

    @api.post(
        "/models/{name}/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
    )
    async def predict_model(self, name: str, request: Request) -> Response:
        """Model ``name`` on ``{"texts": [...]}``: per text, a classifier's label and probabilities or an NER
        model's ``entities`` (``text``, ``type``, ``start``, ``end``, ``score``; character offsets)."""
        route = "/models/{name}/predict"
        if name not in self.managers:
            return self._unknown_model(route, name, _request_id(request), time.perf_counter())
        return await self._serve(request, name, route)

    async def _serve(
        self, request: Request, name: str, route: str, protocol: "_Protocol | None" = None
    ) -> Response:
        """The request path of every prediction route: check and read the body, parse it with the route's
        protocol, predict through the batch queue, answer in the protocol's shape."""
        protocol = protocol or NATIVE
        started, request_id = time.perf_counter(), _request_id(request)
        try:
            check_content_type(request.headers.get("content-type"))
            check_content_length(request.headers.get("content-length"), self.limits)
            body = await _read_body(request, self.limits.max_body_bytes)
            manager = self.managers[name]
            task = manager.current.task if manager.current else "classification"
            texts, context = protocol.parse(body, self.limits, task)
            model, predictions = await self._answer(name, texts, request, request_id)
        except BadRequest as exc:
            return self._error(route, exc.status, exc.message, request_id, started)
        except _NotReady:
            message = f"no version of {name} is loaded yet; see GET /metadata"
            return self._error(route, 503, message, request_id, started)
        self.recorder.record(request_id, model, texts, predictions)  # never blocks (bertops.monitoring)
        payload = protocol.render(model, predictions, context)
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(route, 200, elapsed)
        logger.info(
            "predict",
            extra={
                "texts": len(texts),
                "model": model.name,
                "model_version": model.version,
                "latency_ms": round(elapsed * 1000, 2),
            },
        )
        return JSONResponse(payload, headers=self._id_header(request_id))

    # ------------------------------------------------------------------- MLflow's scoring protocol
    @api.post("/invocations", responses=_ERRORS)
    async def invocations(self, request: Request) -> Response:
        """MLflow's scoring protocol for the default model, answered as ``mlflow models serve`` answers:
        ``{"inputs" | "instances" | "dataframe_split" | "dataframe_records": ..., "params": ...}`` (or CSV)
        -> ``{"predictions": [...]}``."""
        return await self._invoke(request, self.settings.model_name, "/invocations")

    @api.post("/models/{name}/invocations", responses=_ERRORS)
    async def invocations_model(self, name: str, request: Request) -> Response:
        """MLflow's scoring protocol for model ``name``."""
        return await self._invoke(request, name, "/models/{name}/invocations")

    async def _invoke(self, request: Request, name: str, route: str) -> Response:
        started, request_id = time.perf_counter(), _request_id(request)
        if name not in self.managers:
            return self._unknown_model(route, name, request_id, started)
        model = self.managers[name].current
        try:
            check_content_length(request.headers.get("content-length"), self.limits)
            body = await _read_body(request, self.limits.max_body_bytes)
            if model is None:
                raise _NotReady(name)
        except BadRequest as exc:
            return self._error(route, exc.status, exc.message, request_id, started)
        except _NotReady:
            return self._error(route, 503, f"no version of {name} is loaded yet", request_id, started)
        content_type = request.headers.get("content-type")
        async with self._model_call:  # MLflow's own parsing and signature checks, then the pyfunc
            answer = await asyncio.to_thread(mlflow_scoring.invoke, model.pyfunc, body, content_type)
        self.metrics.observe_request(route, answer.status, time.perf_counter() - started,
                                     reason=None if answer.status < 400 else "bad_request")  # fmt: skip
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type,
                        headers=self._id_header(request_id))  # fmt: skip

    # ------------------------------------------------------------- Open Inference Protocol v2 (KServe)
    @api.get("/v2")
    async def v2_server(self) -> dict[str, Any]:
        """Open Inference Protocol server metadata."""
        return {"name": APP_NAME, "version": _package_version(), "extensions": []}

    @api.get("/v2/health/live")
    async def v2_live(self) -> dict[str, bool]:
        """Open Inference Protocol liveness."""
        return {"live": True}

    @api.get("/v2/health/ready", responses={503: {"model": ErrorResponse}})
    async def v2_ready(self) -> Response:
        """Open Inference Protocol readiness: every served model has a version loaded."""
        ready = all(m.current is not None for m in self.managers.values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}", responses={404: {"model": ErrorResponse}})
    async def v2_model(self, name: str) -> Response:
        """Open Inference Protocol model metadata: versions, the input tensor (BYTES texts) and the outputs."""
        if name not in self.managers:
            return JSONResponse({"error": f"model {name!r} is not served here"}, status_code=404)
        m = self.managers[name].current
        return JSONResponse(open_inference.model_metadata(
            name, m.version if m else None, m.task if m else "classification", m.labels if m else []
        ))  # fmt: skip

    @api.get("/v2/models/{name}/ready", responses={404: {"model": ErrorResponse}})
    async def v2_model_ready(self, name: str) -> Response:
        """Open Inference Protocol model readiness."""
        if name not in self.managers:
            return JSONResponse({"error": f"model {name!r} is not served here"}, status_code=404)
        ready = self.managers[name].current is not None
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @api.post("/v2/models/{name}/infer", responses=_ERRORS)
    async def v2_infer(self, name: str, request: Request) -> Response:
        """Open Inference Protocol inference: one BYTES input tensor of texts; the model's output tensors."""
        route = "/v2/models/{name}/infer"
        if name not in self.managers:
            return self._unknown_model(route, name, _request_id(request), time.perf_counter())
        return await self._serve(request, name, route, OPEN_INFERENCE)

    @api.post("/feedback", responses=_ERRORS)
    async def feedback(self, request: Request) -> Response:
        """The true ``label`` (or ``entities``) of text ``index`` of the answer with ``request_id``
        (its X-Request-ID); stored beside the served records for the drift check and the next retrain."""
        started, model = time.perf_counter(), self.manager.current
        try:
            check_content_type(request.headers.get("content-type"))
            fb = parse_feedback(await _read_body(request, self.limits.max_body_bytes), model and model.labels)
        except (BadFeedback, BadRequest) as exc:
            return self._error("/feedback", getattr(exc, "status", 400), str(getattr(exc, "message", exc)),
                               _request_id(request), started)  # fmt: skip
        if not self.recorder.feedback(fb.request_id, fb.index, fb.label, fb.entities_json()):
            message = "feedback not stored: monitoring.enabled is false, or its queue is full (retry)"
            return self._error("/feedback", 503, message, _request_id(request), started)
        for trial in self.trials.values():  # a mirrored request: its label scores the candidate too
            trial.feedback(fb.request_id, fb.index, fb.label)
        self.metrics.observe_request("/feedback", 202, time.perf_counter() - started)
        return JSONResponse({"accepted": True, "request_id": fb.request_id}, status_code=202)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the replica answers."""
        return {"status": "alive"}

    @api.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> Response:
        """Readiness: 200 when a model version is loaded and warmed up, else 503."""
        model = self.manager.current
        if model is None:
            body = {"ready": False, "error": self.manager.last_error or "loading"}
            if self.manager.alias_unset:  # not loading: no version has the alias yet
                body["alias_unset"] = True
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ready": True, "model": model.name, "version": model.version})

    @api.get("/metadata", response_model=MetadataResponse)
    async def metadata(self) -> dict[str, Any]:
        """The served versions: name, version, task, labels, data version, when loaded; the last switch error.
        ``ready`` and ``model`` are the default model's; ``models`` lists every served model."""
        model = self.manager.current
        return {
            "ready": model is not None,
            "model": model.metadata() if model else None,
            "models": [
                {
                    "name": name,
                    "default": name == self.settings.model_name,
                    "ready": m.current is not None,
                    "model": m.current.metadata() if m.current else None,
                    "last_reload_error": m.last_error,
                }
                for name, m in self.managers.items()
            ],
            "tracking_uri": self.settings.tracking_uri,
            "poll_interval_s": self.settings.poll_interval_s,
            "last_reload_error": self.manager.last_error,
        }

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        """Prometheus exposition of this replica's metrics."""
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    @api.post("/admin/reload", response_model=ReloadResponse, responses=_ERRORS)
    async def admin_reload(self, request: Request, model: str | None = None) -> Response:
        """Follow the alias now (a promotion calls this): the default model, or ``?model=<name>``. Loopback
        callers only; retries a failed version."""
        refused = self._admin_refusal(request, "/admin/reload", model)
        if refused is not None:
            return refused
        return JSONResponse(dataclasses.asdict(await self.reload(model=model)))

    @api.post("/admin/flush", responses=_ERRORS)
    async def admin_flush(self, request: Request) -> Response:
        """Write the served texts and feedback this replica still holds (its writer does so every
        ``monitoring.flush_interval_s``), so that a drift check run now sees them. Loopback callers only."""
        refused = self._admin_refusal(request, "/admin/flush", None)
        if refused is not None:
            return refused
        written = await asyncio.to_thread(self.recorder.flush)
        return JSONResponse({"written": written})

    def _admin_refusal(self, request: Request, route: str, model: str | None) -> Response | None:
        """The 403 (not loopback, no token) or 404 (``model`` not served) of an admin route; None when allowed."""
        host = request.client.host if request.client else None
        # A service that listens beyond loopback may sit behind HAProxy, whose connections all come from
        # 127.0.0.1: there the peer address proves nothing, and everyone needs the token.
        local = host in LOOPBACK and self.settings.host in LOOPBACK
        if not local and not _token_ok(request):
            message = (
                f"{route} is allowed from loopback (on a service bound to loopback), or with the "
                f"{ADMIN_TOKEN_ENV} bearer token; not from {host}"
            )
            return self._error(route, 403, message, None, time.perf_counter())
        if model is not None and model not in self.managers:
            message = f"model {model!r} is not served here (served: {', '.join(self.managers)})"
            return self._error(route, 404, message, None, time.perf_counter())
        return None

    async def reload(self, force: bool = True, model: str | None = None) -> Any:
        """Handle method for the same: ``serve.get_app_handle("bertops").reload.remote()``."""
        result = await self.managers[model or self.settings.model_name].refresh(force=force)
        logger.info("reload of %s requested: %s", model or self.settings.model_name, result.message)
        return result

    # ------------------------------------------------------ live trial: a candidate beside the champion
    async def _answer(
        self, name: str, texts: list[str], request: Request, request_id: str
    ) -> tuple[LoadedModel, list[dict[str, Any]]]:
        """The candidate's answer when a canary routes the caller there, else the champion's (mirrored to a
        shadowing candidate, never waited for). See bertops.serving.live."""
        trial = self.trials.get(name)
        if trial is None or trial.candidate is None:
            return await self._predict(name, texts)
        champion = self.managers[name].current
        if champion is not None and champion.version == trial.version:  # promoted: it answers as champion
            trial.end("promoted: the alias now points at it")
            return await self._predict(name, texts)
        caller = request.headers.get(CALLER_HEADER) or (request.client.host if request.client else request_id)
        if trial.routes(caller):
            answered = await trial.answer(texts)
            if answered is not None:
                return answered
        started = time.perf_counter()
        model, predictions = await self._predict(name, texts)
        ms = (time.perf_counter() - started) * 1000
        trial.champion_answered(ms)
        trial.mirror(request_id, texts, predictions, ms)
        return model, predictions

    async def _call(self, model: LoadedModel, texts: list[str]) -> list[dict[str, Any]]:
        """One model call of the candidate, under the replica's model lock like the champion's batches."""
        async with self._model_call:
            return await asyncio.to_thread(model.predict, texts)

    async def _shadow_turn(self, quiet_s: float) -> None:
        """Return once the champion has had no batch running or queued (and the model lock free) for ``quiet_s``."""
        loop = asyncio.get_running_loop()
        while True:
            if self.batcher.busy or self._model_call.locked():
                await asyncio.sleep(SHADOW_YIELD_S)
                continue
            left = quiet_s - (loop.time() - self.batcher.idle_since)
            if left <= 0:
                return
            await asyncio.sleep(min(left, SHADOW_YIELD_S))

    def _preloaded(self, name: str, version: str) -> LoadedModel | None:
        """The trial's candidate when the alias moved to it: the switch takes it as it is (no second load)."""
        trial = self.trials.get(name)
        return trial.candidate if trial is not None and trial.version == version else None

    def _trial(self, request: Request, route: str, model: str | None) -> tuple[str, LiveTrial | None, Any]:
        """(model name, its trial or None, the refusal response or None) of a live-trial admin route."""
        name = model or self.settings.model_name
        return name, self.trials.get(name), self._admin_refusal(request, route, name)

    @api.post("/admin/shadow", responses=_ERRORS)
    async def admin_shadow(
        self,
        request: Request,
        version: str,
        model: str | None = None,
        queue_size: int = _SHADOW_DEFAULTS.queue_size,
        batch_texts: int = _SHADOW_DEFAULTS.batch_texts,
        quiet_ms: float = _SHADOW_DEFAULTS.quiet_ms,
    ) -> Response:
        """Load and warm up ``version`` of ``model`` (default: the default model) as the candidate and mirror
        the champion's requests to it. A version that fails to load or to warm up gets no traffic: 422 says why."""
        name, trial, refused = self._trial(request, "/admin/shadow", model)
        if refused is not None:
            return refused
        champion = self.managers[name].current
        if champion is not None and champion.version == version:
            return self._error(
                "/admin/shadow", 409, f"{name} v{version} is the champion already", None, time.perf_counter()
            )
        if trial is None or trial.candidate is None or trial.version != version:
            try:
                loaded = await self.managers[name].load(version)
            except ModelLoadError as exc:
                message = f"candidate {name} v{version} not loaded, so it gets no traffic: {exc}"
                return self._error("/admin/shadow", 422, message, None, time.perf_counter())
            if trial is not None:
                await trial.stop_shadow()
                trial.end(f"replaced by v{version}")
            quiet_s = max(0.0, quiet_ms) / 1000
            trial = self.trials[name] = LiveTrial(
                loaded, max(1, queue_size), self._call, self.live_metrics,
                wait_turn=functools.partial(self._shadow_turn, quiet_s),
            )  # fmt: skip
        trial.start_shadow(max(1, batch_texts))
        logger.info("shadow of %s v%s started", name, version)
        return self._trial_status(name, trial)

    @api.post("/admin/shadow/stop", responses=_ERRORS)
    async def admin_shadow_stop(self, request: Request, model: str | None = None) -> Response:
        """Stop mirroring to the candidate; it stays loaded (for a canary) and its report stays readable."""
        name, trial, refused = self._trial(request, "/admin/shadow/stop", model)
        if refused is not None:
            return refused
        if trial is not None:
            await trial.stop_shadow()
        return self._trial_status(name, trial)

    @api.get("/admin/candidate", responses=_ERRORS)
    async def admin_candidate(self, request: Request, model: str | None = None) -> Response:
        """The candidate of ``model``: its version and phase, the shadow report so far, the canary step."""
        name, trial, refused = self._trial(request, "/admin/candidate", model)
        if refused is not None:
            return refused
        return self._trial_status(name, trial)

    @api.post("/admin/canary", responses=_ERRORS)
    async def admin_canary(self, request: Request, percent: float, model: str | None = None) -> Response:
        """Send ``percent`` of requests (by a stable hash of the caller) to the loaded candidate; the JSON body,
        if any, holds the limits (``promotion.canary``: ``max_error_rate``, ``max_p99_ratio``,
        ``step_requests``) past which it is rolled back at once. ``percent=0`` ends the canary."""
        name, trial, refused = self._trial(request, "/admin/canary", model)
        if refused is not None:
            return refused
        if trial is None or trial.candidate is None:
            message = f"{name} has no candidate loaded (POST /admin/shadow first)"
            return self._error("/admin/canary", 409, message, None, time.perf_counter())
        if not 0 <= percent <= 100:
            return self._error(
                "/admin/canary", 400, f"percent {percent} is not in [0, 100]", None, time.perf_counter()
            )
        body = await _read_body(request, self.limits.max_body_bytes)
        try:
            # The share is the query's; the body's percent/steps (a whole promotion.canary) do not apply here.
            limits = CanaryConfig.model_validate({**json.loads(body or b"{}"), "percent": 100, "steps": []})
        except ValueError as exc:  # bad JSON, or a limit out of range (pydantic's ValidationError)
            return self._error("/admin/canary", 400, f"canary limits: {exc}", None, time.perf_counter())
        trial.set_canary(percent, limits)
        logger.info("canary of %s v%s at %s%%", name, trial.version, percent)
        return self._trial_status(name, trial)

    @api.post("/admin/rollback", responses=_ERRORS)
    async def admin_rollback(self, request: Request, model: str | None = None) -> Response:
        """Drop the candidate: the champion answers every request again."""
        name, trial, refused = self._trial(request, "/admin/rollback", model)
        if refused is not None:
            return refused
        if trial is not None:
            await trial.stop_shadow()
            trial.end("rolled back by an operator")
        return self._trial_status(name, trial)

    def _trial_status(self, name: str, trial: LiveTrial | None) -> Response:
        """What every live-trial admin route answers: the model, its champion, the trial's state (or none)."""
        champion = self.managers[name].current
        status = trial.status() if trial else {"phase": "none", "candidate_version": None}
        return JSONResponse(
            {"model": name, "champion_version": champion.version if champion else None, **status}
        )

    def _id_header(self, request_id: str | None) -> dict[str, str] | None:
        # Behind Ray's proxy the header is added for us; a second copy would read "abc, abc" to the client.
        return {REQUEST_ID_HEADER: request_id} if request_id and not self._behind_proxy else None

    def _unknown_model(self, route: str, name: str, request_id: str | None, started: float) -> Response:
        message = f"model {name!r} is not served here (served: {', '.join(self.managers)})"
        return self._error(route, 404, message, request_id, started)

    def _error(
        self, route: str, status: int, message: str, request_id: str | None, started: float
    ) -> Response:
        reason = {
            413: "too_large",
            415: "unsupported_media_type",
            503: "not_ready",
            403: "forbidden",
            404: "unknown_model",
        }.get(status, "bad_request")
        self.metrics.observe_request(route, status, time.perf_counter() - started, reason=reason)
        logger.info("refused %s: %d %s", route, status, message, extra={"status": status})
        headers = dict(self._id_header(request_id) or {})
        if status == 503:  # no version loaded yet: the model is loading, or waits for its first champion
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------- building
def deployment_options(cfg: BertopsConfig) -> dict[str, Any]:
    """Replicas, autoscaling, CPU/GPU per replica and concurrency from ``serving`` in params.yaml."""
    s = cfg.serving
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.num_cpus_per_replica, "num_gpus": s.num_gpus_per_replica},
        # Enough requests in flight per replica to fill a batch of single-text requests twice over.
        "max_ongoing_requests": s.max_ongoing_requests or max(2 * s.max_batch_size, 8),
        "logging_config": {"encoding": "JSON", "log_level": "INFO"},
        "health_check_period_s": 10,
    }
    if s.num_replicas == "auto":
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }  # fmt: skip
    else:
        options["num_replicas"] = s.num_replicas
    return options


def app_from_config(cfg: BertopsConfig) -> Application:
    """The serving application for a validated config (not yet running)."""
    settings = ServiceSettings.from_config(cfg)
    return BertopsService.options(**deployment_options(cfg)).bind(settings.model_dump())


def config_from_args(args: dict[str, Any]) -> BertopsConfig:
    """Resolve builder arguments: ``config`` (a whole config mapping) or ``params`` (a path, default
    params.yaml), plus ``set`` (override(s) ``section.key=value``, a list or one string)."""
    overrides = args.get("set") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    unknown = sorted(set(args) - {"config", "params", "set"})
    if unknown:
        raise ValueError(f"unknown build_app argument(s) {unknown}; allowed: config, params, set")
    if "config" in args:
        from bertops.config import apply_overrides

        return validate_config(apply_overrides(dict(args["config"]), overrides), "build_app args.config")
    return load_config(args.get("params", "params.yaml"), overrides)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / a RayService ``import_path`` (see the module docstring)."""
    return app_from_config(config_from_args(args))


class ServeConflict(RuntimeError):
    """Deploying would replace a service that already runs on this Ray cluster at another address."""


def refuse_to_replace(host: str, port: int) -> None:
    """Raise :class:`ServeConflict` when the connected cluster already serves bertops' application at another
    HTTP address: Serve has one HTTP address per cluster ("new HTTP config is ignored"), so deploying would switch
    that service (the local stack's) to this one's models and never listen where asked."""
    from ray.serve.context import _get_global_client  # Serve's own handle on a running controller

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    details = client.get_serve_details()
    http = details.get("http_options") or {}
    running = (http.get("host"), http.get("port"))
    if APP_NAME in (details.get("applications") or {}) and running != (host, port):
        raise ServeConflict(
            f"this Ray cluster already serves application {APP_NAME!r} at {running[0]}:{running[1]} (the local "
            f"stack's, or another `bertops serve`); deploying here would replace it and never listen on "
            f"{host}:{port}. Use that service, stop it first (`bertops stack down`), or serve on another Ray "
            "(without the stack's RAY_ADDRESS, or with --address)"
        )


def start(
    cfg: BertopsConfig, host: str | None = None, port: int | None = None, address: str | None = None
) -> str:
    """Deploy the application on Ray (``address``, else ``cfg.ray_address()``, else a local Ray) and return
    its base URL. Serve's HTTP proxy binds ``host:port`` (default ``serving.host``/``serving.port``)."""
    import ray

    from bertops.serving.ingress import HAPROXY_SWITCHES, ray_process_env

    s = cfg.serving
    host, port = host or s.host, port or s.port
    if host != s.host:  # the replicas must know where the service listens (who counts as a local caller)
        s = s.model_copy(update={"host": host})
        cfg = cfg.model_copy(update={"serving": s})
    if not ray.is_initialized():
        address = address or cfg.ray_address()
        if address is None:
            # A local Ray started here: its processes inherit this environment (serving.ingress).
            os.environ.update(ray_process_env(s))
        elif s.ingress == "haproxy" and any(os.environ.get(k) != v for k, v in HAPROXY_SWITCHES.items()):
            logger.warning(
                "serving.ingress=haproxy takes effect only when the Ray cluster's nodes were started with %s "
                "(see bertops.serving.ingress); this process cannot change that",
                " ".join(f"{k}={v}" for k, v in HAPROXY_SWITCHES.items()),
            )
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    refuse_to_replace(host, port)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_from_config(cfg), name=APP_NAME, route_prefix=s.route_prefix)
    url = f"http://{host}:{port}{s.route_prefix.rstrip('/')}"
    logger.info("serving %s@%s at %s", ", ".join(ServiceSettings.from_config(cfg).served), s.model_alias, url)
    return url
