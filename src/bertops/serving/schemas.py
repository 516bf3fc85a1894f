"""Request and response bodies of the serving API, and the checks that turn bad input into a 4xx.

The predict body is parsed here, by hand rather than by FastAPI's automatic body binding, for two reasons:
the limits (texts per request, bytes per text) come from ``params.yaml`` at run time, and every rejection
must carry a message that names the field and what was wrong, e.g.::

    parse_predict_body(b'{"texts": ["ok", 3]}', RequestLimits())
    # -> BadRequest(422, "texts[1]: expected a string, got number")

Nothing here imports Ray, MLflow or TensorFlow: the module is unit-tested on its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


class BadRequest(ValueError):
    """A request the service refuses: ``status`` is the 4xx to answer with, ``message`` says what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestLimits:
    """Per-request bounds from ``serving`` in ``params.yaml``."""

    max_texts: int = 64
    max_text_bytes: int = 10_000
    max_body_bytes: int = 1_000_000


# ------------------------------------------------------------------------------------------------ bodies
class PredictRequest(BaseModel):
    """``POST /predict`` body: the texts to classify (raw text; tokenisation happens inside the model)."""

    texts: list[str] = Field(
        min_length=1,
        description="Texts to classify, one prediction each, in order. Limits: serving.max_texts_per_request "
        "texts, serving.max_text_bytes UTF-8 bytes each. Longer texts are truncated by the model to its "
        "max_seq_length - 2 word pieces (the first ones are kept).",
        examples=[["a moving, beautifully acted film", "dull and far too long"]],
    )


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    probability: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class, in label-map order.")


class Entity(BaseModel):
    text: str = Field(description="The entity as it appears in the input text.")
    type: str = Field(description="The entity type (the tag map's types, e.g. `person`, `location`).")
    start: int = Field(description="Character offset of its first character in the input text.")
    end: int = Field(description="Character offset just past its last character (`text[start:end]`).")
    score: float = Field(description="Mean probability of its words' predicted tags.")


class EntityPrediction(BaseModel):
    entities: list[Entity] = Field(description="The named entities of one text, in text order.")


class PredictResponse(BaseModel):
    model: str = Field(description="Registered model name that answered.")
    version: str = Field(description="Registered model version that answered (all texts of one request).")
    predictions: list[Prediction | EntityPrediction] = Field(
        description="One per text: label and probabilities (classifier), or the entities (NER model)."
    )


class ModelMetadata(BaseModel):
    model: str
    version: str
    alias: str
    labels: list[str]
    data_version: str | None = Field(description="The version's `bertops.data_version` tag, if set.")
    run_id: str | None
    loaded_at: str = Field(description="When this replica loaded the version (UTC, ISO 8601).")
    task: str = Field(default="classification", description="classification or ner.")


class ServedModel(BaseModel):
    name: str = Field(description="Registered model name: POST /models/{name}/predict.")
    default: bool = Field(description="True for the model that POST /predict answers with.")
    ready: bool
    model: ModelMetadata | None
    last_reload_error: str | None


class MetadataResponse(BaseModel):
    ready: bool
    model: ModelMetadata | None = Field(description="The default model (POST /predict).")
    models: list[ServedModel] = Field(default_factory=list, description="Every served model.")
    tracking_uri: str
    poll_interval_s: float
    last_reload_error: str | None = Field(
        description="Why the newest switch attempt failed (the old version kept serving), if it did."
    )


class ReloadResponse(BaseModel):
    switched: bool
    version: str | None = Field(description="The version served after the reload.")
    previous_version: str | None
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong with the request.")
    request_id: str | None = None


# ------------------------------------------------------------------------------------------------ checks
JSON_MEDIA_TYPES = ("application/json",)
# Every body the service reads is a few levels deep ({"dataframe_split": {"data": [[...]]}} is 4); a body
# nested thousands of levels deep would exhaust the JSON decoder's recursion, so it is refused first.
MAX_JSON_DEPTH = 32
NESTING_MESSAGE = f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep; send flat JSON"
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def check_json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse (400) JSON whose arrays/objects nest deeper than ``limit``, naming the byte offset."""
    if body.count(b"[") + body.count(b"{") <= limit:  # cannot be deeper: the common case costs two scans
        return
    depth = 0
    for token in _JSON_TOKENS.finditer(body):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise BadRequest(400, f"{NESTING_MESSAGE} (at byte {token.start()})")
        elif char in (b"]", b"}"):
            depth -= 1


def check_content_type(header: str | None, accepted: tuple[str, ...] = JSON_MEDIA_TYPES) -> None:
    """Refuse (415) a body that is declared as something other than JSON, or JSON in another charset than
    UTF-8. No ``Content-Type`` at all is read as JSON (what most hand-written clients send)."""
    if header is None or not header.strip():
        return
    media_type, *parameters = (part.strip() for part in header.split(";"))
    media_type = media_type.lower()
    if media_type not in accepted and not media_type.endswith("+json"):
        raise BadRequest(
            415, f"content type {media_type!r} is not supported; send the body as {' or '.join(accepted)}"
        )
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest(415, f"charset {value.strip()!r} is not supported; send UTF-8")


def check_content_length(header: str | None, limits: RequestLimits) -> None:
    """Refuse a body whose declared ``Content-Length`` is over the limit before reading it."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise BadRequest(400, f"Content-Length header {header!r} is not an integer") from None
    if declared > limits.max_body_bytes:
        raise BadRequest(
            413,
            f"request body is {declared} bytes; the limit is {limits.max_body_bytes} (serving.max_body_bytes)",
        )


def load_json(body: bytes, limits: RequestLimits) -> Any:
    """Decode a JSON request body within the size limit; 413 for size, 400 for anything unparseable."""
    if len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"request body is over {limits.max_body_bytes} bytes (serving.max_body_bytes)")
    if not body.strip():
        raise BadRequest(400, 'empty request body; send JSON like {"texts": ["some text"]}')
    check_json_depth(body)
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"request body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # json's decoder gives up on very deep nesting (thousands of levels)
        raise BadRequest(400, NESTING_MESSAGE) from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (Python's int conversion limit)
        raise BadRequest(400, f"a value in the body cannot be read: {exc}") from None
    _check_unicode(payload, "body")
    return payload


def check_unicode_json(body: bytes) -> None:
    """400 for a JSON body whose strings are not all real text (a lone surrogate); anything unparseable is left to
    the caller's own parser and its message."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return
    _check_unicode(payload, "body")


def _check_unicode(value: Any, where: str) -> None:
    """Every string (and key) is real Unicode text: JSON's ``\\ud800`` escapes decode to lone surrogates,
    which no text encoding can hold (the tokenizer and the monitoring store would fail on them)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(
                400,
                f"{where} holds a lone surrogate ({value[exc.start]!r} at character {exc.start}): send text "
                "as UTF-8, with each astral character as a surrogate pair or itself",
            ) from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{where} key")
            _check_unicode(item, f"{where}.{key}" if isinstance(key, str) and key.isidentifier() else where)


def parse_predict_body(body: bytes, limits: RequestLimits) -> list[str]:
    """Validate a ``POST /predict`` body and return its texts.

    Raises :class:`BadRequest` (413 for sizes, 400 for unparseable JSON, 422 for a well-formed body with the
    wrong content) naming the field: ``texts``, ``texts[i]``.
    """
    payload = load_json(body, limits)
    if not isinstance(payload, dict):
        raise BadRequest(422, f'the body must be a JSON object like {{"texts": [...]}}, got {_kind(payload)}')
    unknown = sorted(set(payload) - {"texts"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; the only field is 'texts'")
    if "texts" not in payload:
        raise BadRequest(422, "missing field 'texts' (a list of strings)")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f"field 'texts' must be a list of strings, got {_kind(texts)}")
    return check_texts(texts, limits)


def check_texts(texts: list[Any], limits: RequestLimits, field: str = "texts") -> list[str]:
    """The texts of a request, checked: at least one, at most ``max_texts``, each a string within
    ``max_text_bytes``. ``field`` names the list in the messages (``texts``, ``inputs[0].data``)."""
    if not texts:
        raise BadRequest(422, f"field '{field}' is an empty list; send at least one text")
    if len(texts) > limits.max_texts:
        raise BadRequest(
            413,
            f"field '{field}' has {len(texts)} items; the limit is {limits.max_texts} "
            "(serving.max_texts_per_request): split the request",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(422, f"{field}[{i}]: expected a string, got {_kind(text)}")
        size = len(text.encode("utf-8"))
        if size > limits.max_text_bytes:
            raise BadRequest(
                413,
                f"{field}[{i}] is {size} UTF-8 bytes; the limit is {limits.max_text_bytes} (serving.max_text_bytes)",
            )
    return texts


def _kind(value: Any) -> str:
    """JSON type name of a decoded value, for error messages."""
    return {
        type(None): "null", bool: "boolean", int: "number", float: "number",
        str: "string", list: "array", dict: "object",
    }.get(type(value), type(value).__name__)  # fmt: skip
