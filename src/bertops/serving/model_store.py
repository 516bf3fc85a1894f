"""Which model version a replica serves, and how it switches to a newly promoted one.

- :class:`ModelSource` names what to follow: the registered model and alias (``models:/<name>@champion``).
- :func:`load_version` downloads one version's MLflow pyfunc and passes it through a warm-up on a few fixed
  texts that checks the output contract of its task (the ``bertops_task`` of its MLflow metadata): a
  classifier's columns ``label``, ``probability``, ``prob_<label>`` with probabilities that sum to 1
  (:func:`warm_up`); an NER model's ``entities`` column, each entity ``{"text", "type", "start", "end",
  "score"}`` whose offsets point at its text in the input (:func:`warm_up_ner`). A version that fails to load
  or to warm up is never served.
- :class:`ModelManager` holds the version being served. :meth:`ModelManager.refresh` resolves the alias and,
  when it moved, loads the new version in a worker thread while the old one keeps answering; only a loaded and
  warmed-up version replaces it, in one assignment. A request batch takes the model object once, so a switch
  never splits or fails a request. A version that failed is remembered and not retried on every poll (a forced
  reload, e.g. ``POST /admin/reload``, retries it).

MLflow and pandas are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

# Fixed warm-up inputs: short, long (over any max_seq_length, so truncation runs), non-ASCII, empty.
WARMUP_TEXTS = (
    "a warm, funny and beautifully acted film",
    "dull " * 600,
    "Ça commence bien, puis ça s'effondre — 最悪",
    "",
)
DATA_VERSION_TAG = "bertops.data_version"
TASK_METADATA_KEY = "bertops_task"
ENTITY_KEYS = ("text", "type", "start", "end", "score")


class ModelLoadError(RuntimeError):
    """A registered version that cannot be served: it failed to load or to pass the warm-up check."""


class AliasUnset(ModelLoadError):
    """The registry answered, and no version carries the alias (or the model is not registered yet)."""


@dataclass(frozen=True)
class ModelSource:
    """The registered model a service follows: ``models:/<name>@<alias>`` on ``tracking_uri``."""

    tracking_uri: str
    name: str
    alias: str = "champion"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve(self) -> str:
        """The version the alias points at now. Raises :class:`ModelLoadError` when it points nowhere."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as exc:
            kind = (
                AliasUnset
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
                else ModelLoadError
            )
            raise kind(f"cannot resolve {self.uri} on {self.tracking_uri}: {exc.message}") from None


@dataclass
class LoadedModel:
    """One registered version, loaded and warmed up, with what ``GET /metadata`` reports about it."""

    name: str
    version: str
    alias: str
    pyfunc: Any  # mlflow.pyfunc.PyFuncModel
    labels: list[str]
    data_version: str | None = None
    run_id: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    task: str = "classification"

    direct: Callable[[list[str]], list[dict[str, Any]]] | None = None  # bertops' own models: the bundle

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """One prediction per text, in order: ``{"label", "probability", "probabilities"}`` (classification)
        or ``{"entities": [...]}`` (NER). bertops' own models answer from their bundle directly
        (:func:`direct_predictor`); any other pyfunc through pandas and ``pyfunc.predict``."""
        if self.direct is not None:
            return self.direct(list(texts))
        return self.predict_pyfunc(texts)

    def predict_pyfunc(self, texts: list[str]) -> list[dict[str, Any]]:
        """The same answers through the MLflow pyfunc (a DataFrame in, a DataFrame out)."""
        import pandas as pd

        frame = self.pyfunc.predict(pd.DataFrame({"text": list(texts)}))
        if self.task == "ner":
            return entities_from_frame(frame, list(texts))
        return predictions_from_frame(frame, self.labels, expected_rows=len(texts))

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.name, "version": self.version, "alias": self.alias, "labels": self.labels,
            "data_version": self.data_version, "run_id": self.run_id, "loaded_at": self.loaded_at,
            "task": self.task,
        }  # fmt: skip


def labels_of(frame: Any) -> list[str]:
    """Class labels from the pyfunc's ``prob_<label>`` columns, in their (label-map) order."""
    return [str(c)[len("prob_") :] for c in frame.columns if str(c).startswith("prob_")]


def predictions_from_frame(frame: Any, labels: list[str], expected_rows: int) -> list[dict[str, Any]]:
    """Turn the pyfunc's output DataFrame into response dicts, checking the output contract on the way.

    Raises :class:`ModelLoadError` naming the row and column that break the contract.
    """
    missing = [
        c for c in ("label", "probability", *(f"prob_{lab}" for lab in labels)) if c not in frame.columns
    ]
    if missing:
        raise ModelLoadError(f"model output lacks column(s) {missing}; it has {list(frame.columns)}")
    if len(frame) != expected_rows:
        raise ModelLoadError(f"model returned {len(frame)} rows for {expected_rows} texts")
    probs = frame[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=float)
    return classifications(list(frame["label"]), list(frame["probability"]), probs, labels)


def classifications(
    label_column: list[Any], probability_column: list[Any], probs: Any, labels: list[str]
) -> list[dict[str, Any]]:
    """Response dicts from a classifier's labels, their probabilities and the (texts, classes) matrix,
    checking the output contract. Raises :class:`ModelLoadError` naming the row that breaks it."""
    out = []
    for i, (label, probability) in enumerate(zip(label_column, probability_column, strict=True)):
        row = probs[i]
        if not all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in row) or abs(row.sum() - 1) > 1e-3:
            raise ModelLoadError(f"row {i}: class probabilities {row.tolist()} are not a distribution")
        if str(label) not in labels:
            raise ModelLoadError(f"row {i}: label {label!r} is not one of {labels}")
        out.append({
            "label": str(label),
            "probability": float(probability),
            "probabilities": {lab: float(p) for lab, p in zip(labels, row, strict=True)},
        })  # fmt: skip
    return out


def warm_up(pyfunc: Any) -> list[str]:
    """Run the fixed warm-up texts through a freshly loaded pyfunc; return its labels or raise ModelLoadError."""
    import pandas as pd

    try:
        frame = pyfunc.predict(pd.DataFrame({"text": list(WARMUP_TEXTS)}))
    except Exception as exc:  # any failure of an unknown model means "do not serve it"
        raise ModelLoadError(f"warm-up prediction failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(frame, "columns"):
        raise ModelLoadError(f"model output is a {type(frame).__name__}, not a DataFrame")
    labels = labels_of(frame)
    if len(labels) < 2:
        raise ModelLoadError(
            f"model output has no prob_<label> columns for 2+ classes: {list(frame.columns)}"
        )
    predictions_from_frame(frame, labels, expected_rows=len(WARMUP_TEXTS))
    return labels


def entities_from_frame(frame: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The NER pyfunc's ``entities`` column as response dicts, checking the contract: every entity has
    :data:`ENTITY_KEYS` and its offsets point at its text. Raises :class:`ModelLoadError` naming row and entity."""
    if not hasattr(frame, "columns") or "entities" not in frame.columns:
        raise ModelLoadError(
            f"NER model output lacks the 'entities' column; it has {list(getattr(frame, 'columns', []))}"
        )
    if len(frame) != len(texts):
        raise ModelLoadError(f"model returned {len(frame)} rows for {len(texts)} texts")
    return entity_lists(list(frame["entities"]), texts)


def entity_lists(per_text: list[Any], texts: list[str]) -> list[dict[str, Any]]:
    """``{"entities": [...]}`` per text from an NER model's entity lists, checking every entity's keys and
    offsets. Raises :class:`ModelLoadError` naming row and entity."""
    if len(per_text) != len(texts):
        raise ModelLoadError(f"model returned {len(per_text)} rows for {len(texts)} texts")
    out = []
    for i, (text, entities) in enumerate(zip(texts, per_text, strict=True)):
        row = []
        for j, e in enumerate(list(entities)):
            missing = [k for k in ENTITY_KEYS if k not in e]
            if missing:
                raise ModelLoadError(f"row {i}, entity {j}: lacks {missing}")
            start, end = int(e["start"]), int(e["end"])
            if not (0 <= start < end <= len(text)) or text[start:end] != e["text"]:
                raise ModelLoadError(
                    f"row {i}, entity {j}: offsets [{start}, {end}) do not hold {e['text']!r}"
                )
            row.append({"text": str(e["text"]), "type": str(e["type"]), "start": start, "end": end,
                        "score": float(e["score"])})  # fmt: skip
        out.append({"entities": row})
    return out


def warm_up_ner(pyfunc: Any) -> None:
    """Run the fixed warm-up texts through a freshly loaded NER pyfunc; raise ModelLoadError if it fails."""
    import pandas as pd

    try:
        frame = pyfunc.predict(pd.DataFrame({"text": list(WARMUP_TEXTS)}))
    except Exception as exc:  # any failure of an unknown model means "do not serve it"
        raise ModelLoadError(f"warm-up prediction failed: {type(exc).__name__}: {exc}") from exc
    entities_from_frame(frame, list(WARMUP_TEXTS))


def load_version(source: ModelSource, version: str) -> LoadedModel:
    """Download, load and warm up one registered version. Raises :class:`ModelLoadError` on any failure."""
    import mlflow

    started = time.monotonic()
    client = source.client()
    uri = f"models:/{source.name}/{version}"
    try:
        mv = client.get_model_version(source.name, version)
        mlflow.set_tracking_uri(source.tracking_uri)
        mlflow.set_registry_uri(source.tracking_uri)
        pyfunc = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # load errors of any kind keep the old version serving
        raise ModelLoadError(f"loading {uri} failed: {type(exc).__name__}: {exc}") from exc
    # The registry's version tag first; else what bertops' pyfunc carries in its MLmodel metadata.
    model_meta = getattr(getattr(pyfunc, "metadata", None), "metadata", None) or {}
    task = str(model_meta.get(TASK_METADATA_KEY, "classification"))
    if task == "ner":
        warm_up_ner(pyfunc)
        labels = [str(x) for x in model_meta.get("labels") or []]
    else:
        labels = warm_up(pyfunc)
    data_version = (mv.tags or {}).get(DATA_VERSION_TAG) or model_meta.get("data_version")
    loaded = LoadedModel(
        name=source.name, version=str(version), alias=source.alias, pyfunc=pyfunc, labels=labels,
        data_version=data_version, run_id=mv.run_id, task=task,
    )  # fmt: skip
    loaded.direct = checked_direct_predictor(loaded)
    logger.info("loaded %s (labels %s) in %.1fs", uri, labels, time.monotonic() - started)
    return loaded


def direct_predictor(loaded: LoadedModel) -> Callable[[list[str]], list[dict[str, Any]]] | None:
    """For a version logged with bertops' own pyfunc (its Python model holds the bundle): a function that
    answers from the bundle itself, with no DataFrame and no pyfunc schema handling on the way. The same
    bundle calls as the pyfunc (``predict_proba``, ``extract_entities``), so the same numbers. ``None`` for
    any other pyfunc."""
    from mlflow.exceptions import MlflowException

    try:
        python_model = loaded.pyfunc.unwrap_python_model()
    except (MlflowException, AttributeError):  # not a PythonModel-based pyfunc
        return None
    bundle = getattr(python_model, "bundle", None)
    if bundle is None or getattr(bundle, "task", None) != loaded.task:
        return None
    if loaded.task == "ner":
        from bertops.model.entities import extract_entities

        return lambda texts: entity_lists(extract_entities(bundle, texts), texts)
    labels = loaded.labels

    def classify(texts: list[str]) -> list[dict[str, Any]]:
        import numpy as np

        probs = np.asarray(bundle.predict_proba(texts), dtype=np.float64).reshape(-1, len(labels))
        best = probs.argmax(axis=1)
        if len(best) != len(texts):
            raise ModelLoadError(f"model returned {len(best)} rows for {len(texts)} texts")
        return classifications([labels[i] for i in best], probs[np.arange(len(best)), best], probs, labels)

    return classify


def checked_direct_predictor(loaded: LoadedModel) -> Callable[[list[str]], list[dict[str, Any]]] | None:
    """:func:`direct_predictor`, kept only if it answers the warm-up texts exactly as the pyfunc does (else
    the version is served through the pyfunc, and the log says why)."""
    direct = direct_predictor(loaded)
    if direct is None:
        return None
    try:
        same = direct(list(WARMUP_TEXTS)) == loaded.predict_pyfunc(list(WARMUP_TEXTS))
    except ModelLoadError as exc:
        logger.warning("%s v%s: direct path broke the contract (%s); serving through the pyfunc",
                       loaded.name, loaded.version, exc)  # fmt: skip
        return None
    if not same:
        logger.warning("%s v%s: direct path and pyfunc differ on the warm-up texts; serving through the pyfunc",
                       loaded.name, loaded.version)  # fmt: skip
        return None
    return direct


@dataclass(frozen=True)
class RefreshResult:
    switched: bool
    version: str | None
    previous_version: str | None
    message: str


class ModelManager:
    """The version one replica serves, and the switch to a newly promoted one (see the module docstring).

    ``on_switch(old, new)``, ``on_failure(version, error)`` and ``on_skip(version)`` (a refresh passed over a
    version that failed before) let the caller update metrics.
    """

    def __init__(
        self,
        source: ModelSource,
        loader: Callable[[ModelSource, str], LoadedModel] = load_version,
        on_switch: Callable[[LoadedModel | None, LoadedModel], None] | None = None,
        on_failure: Callable[[str | None, str], None] | None = None,
        on_skip: Callable[[str], None] | None = None,
        preloaded: Callable[[str], LoadedModel | None] | None = None,
    ) -> None:
        self.source = source
        # A version already loaded and warmed up elsewhere (the live trial's candidate): switched to as it is.
        self._preloaded = preloaded or (lambda version: None)
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        # True while the registry says no version has the alias: nothing to wait for until one is promoted
        self.alias_unset = False
        self._loader = loader
        self._failed: dict[str, str] = {}  # version -> why it was not switched to
        self._lock = asyncio.Lock()
        self._on_switch = on_switch or (lambda old, new: None)
        self._on_failure = on_failure or (lambda version, error: None)
        self._on_skip = on_skip or (lambda version: None)  # a poll passed over a version that failed before

    async def refresh(self, force: bool = False) -> RefreshResult:
        """Follow the alias: switch to the version it points at if that differs and loads and warms up.

        ``force`` retries a version that failed before. Never raises for a bad version: the old one stays.
        """
        async with self._lock:  # one switch at a time; requests are not blocked by it
            previous = self.current.version if self.current else None
            try:
                target = await asyncio.to_thread(self.source.resolve)
            except ModelLoadError as exc:
                self.alias_unset = isinstance(exc, AliasUnset)
                return self._failure(None, str(exc), previous)
            self.alias_unset = False
            if target == previous:
                self.last_error = None  # the alias is back on what we serve: no failed switch pending
                return RefreshResult(False, previous, previous, f"already serving version {target}")
            if target in self._failed and not force:
                self._on_skip(target)
                return RefreshResult(
                    False, previous, previous, f"version {target} failed before: {self._failed[target]}"
                )
            try:
                loaded = self._preloaded(target) or await self.load(target)
            except ModelLoadError as exc:
                self._failed[target] = str(exc)
                return self._failure(target, f"version {target} not served: {exc}", previous)
            old, self.current = self.current, loaded  # the switch: one assignment
            self._failed.pop(target, None)
            self.last_error = None
            self._on_switch(old, loaded)
            logger.info("now serving %s version %s (was %s)", self.source.name, target, previous)
            return RefreshResult(True, target, previous, f"switched from version {previous} to {target}")

    async def load(self, version: str) -> LoadedModel:
        """Load and warm up ``version`` in a worker thread (not served by this manager). Raises ModelLoadError."""
        return await asyncio.to_thread(self._loader, self.source, version)

    def _failure(self, version: str | None, error: str, previous: str | None) -> RefreshResult:
        self.last_error = error
        self._on_failure(version, error)
        keep = f"; still serving version {previous}" if previous else "; no version is loaded"
        logger.error("not switching to %s version %s: %s%s", self.source.name, version, error, keep)
        return RefreshResult(False, previous, previous, error + keep)

    async def poll(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds, forever (run as a background task; cancel to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive any one failed refresh
                logger.exception("polling %s failed", self.source.uri)
