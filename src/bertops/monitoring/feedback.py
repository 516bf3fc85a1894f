"""``POST /feedback``: the true label (or entities) of a served text, sent back by a client.

    curl -X POST localhost:8000/feedback -H 'content-type: application/json' \\
         -d '{"request_id": "<the X-Request-ID of the answer>", "index": 0, "label": "positive"}'

``index`` is the text's position in its request (default 0). A classifier's feedback names a ``label`` of the
served model; an NER model's names ``entities`` (``[{"start", "end", "type"}, ...]``, character offsets). The
row is stored beside the records (:mod:`bertops.monitoring.store`) and joined to them on
``(request_id, index)`` by the drift check and by the feedback data source.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, ValidationError


class BadFeedback(ValueError):
    """A feedback body that cannot be stored; the message names the field."""


class EntityLabel(BaseModel):
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    type: str = Field(min_length=1)


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=200)
    index: int = Field(default=0, ge=0)
    label: str | None = None
    entities: list[EntityLabel] | None = None

    model_config = {"extra": "forbid"}

    def entities_json(self) -> str | None:
        return None if self.entities is None else json.dumps([e.model_dump() for e in self.entities])


def parse_feedback(body: bytes, labels: list[str] | None) -> FeedbackRequest:
    """Validate a ``POST /feedback`` body; ``labels`` are the served classifier's (None: not checked)."""
    try:
        data: Any = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadFeedback(f"body is not JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise BadFeedback(f"a value in the body cannot be read: {exc}") from None
    try:  # a lone surrogate (JSON's "\ud800") is no text: the store could not write it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadFeedback("the body holds a lone surrogate (e.g. \\ud800): send text as UTF-8") from None
    if not isinstance(data, dict):
        raise BadFeedback('body must be an object {"request_id": ..., "label": ...}')
    try:
        fb = FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadFeedback(f"field {where!r}: {first['msg']}") from None
    if (fb.label is None) == (fb.entities is None):
        raise BadFeedback("give exactly one of 'label' (a classifier) or 'entities' (an NER model)")
    if fb.label is not None and labels and fb.label not in labels:
        raise BadFeedback(f"field 'label': {fb.label!r} is not one of the model's labels {labels}")
    return fb
