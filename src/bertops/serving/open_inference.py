"""The Open Inference Protocol v2 (KServe, Triton) over HTTP/JSON: request parsing and response bodies.

Routes (in ``bertops.serving.app``): ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``. A request sends
the raw texts as one ``BYTES`` tensor (any name; ``text`` in the metadata) of shape ``[n]`` or ``[n, 1]``::

    POST /v2/models/bert-sentiment/infer
    {"id": "42", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                             "data": ["a fine film", "dull and far too long"]}]}
    -> {"model_name": "bert-sentiment", "model_version": "3", "id": "42", "outputs": [
         {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]},
         {"name": "probability", "datatype": "FP64", "shape": [2], "data": [0.93, 0.88]},
         {"name": "probabilities", "datatype": "FP64", "shape": [2, 2], "data": [0.07, 0.93, 0.88, 0.12]}]}

``probabilities`` is row-major, its columns in the order of the model's labels (``GET /v2/models/{name}``
lists them in the output's ``parameters``). An NER model answers one ``entities`` BYTES tensor: a JSON list of
entities per text. ``outputs`` in the request selects among these. Errors are ``{"error": "..."}`` with a 4xx,
and the same limits as ``POST /predict``. Pure: nothing here imports Ray, MLflow or TensorFlow.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bertops.serving.schemas import BadRequest, RequestLimits, check_texts, load_json

INPUT_NAME = "text"
CLASSIFIER_OUTPUTS = ("label", "probability", "probabilities")
NER_OUTPUTS = ("entities",)


def outputs_of(task: str) -> tuple[str, ...]:
    return NER_OUTPUTS if task == "ner" else CLASSIFIER_OUTPUTS


def parse_infer_request(body: bytes, limits: RequestLimits, task: str) -> tuple[list[str], dict[str, Any]]:
    """The texts of an infer request and what the answer needs (``id``, the requested outputs).

    Raises :class:`BadRequest` naming the field (``inputs[0].datatype``, ``inputs[0].data[3]``, ...).
    """
    payload = load_json(body, limits)
    if not isinstance(payload, dict):
        raise BadRequest(422, 'the body must be a JSON object like {"inputs": [{"name": "text", ...}]}')
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(
            422, "field 'inputs' must be a list of exactly one tensor (the texts, datatype BYTES)"
        )
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(
            422, f"inputs[0].datatype must be 'BYTES' (the raw texts), got {tensor.get('datatype')!r}"
        )
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise BadRequest(422, f"inputs[0].shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(422, f"inputs[0].shape must be [n] or [n, 1] (one text per row), got {shape}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(422, "inputs[0].data must be a list of strings")
    if data and all(isinstance(row, list) for row in data):  # row-major nested form [[t1], [t2], ...]
        data = [item for row in data for item in row]
    if len(data) != math.prod(shape):
        raise BadRequest(
            422, f"inputs[0].data has {len(data)} elements; shape {shape} needs {math.prod(shape)}"
        )
    texts = check_texts(data, limits, field="inputs[0].data")
    known = outputs_of(task)
    wanted = payload.get("outputs")
    if wanted is None:
        names = list(known)
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
            raise BadRequest(422, 'field \'outputs\' must be a list like [{"name": "label"}]')
        names = [str(o["name"]) for o in wanted]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest(422, f"unknown output(s) {unknown}; this model has {list(known)}")
    request_id = payload.get("id")
    return texts, {"id": str(request_id) if request_id is not None else None, "outputs": names}


def infer_response(
    name: str, version: str, labels: list[str], predictions: list[dict[str, Any]], context: dict[str, Any]
) -> dict[str, Any]:
    """The infer answer for bertops' predictions (one dict per text, see ``POST /predict``)."""
    n = len(predictions)
    tensors: dict[str, dict[str, Any]] = {
        "label": {"datatype": "BYTES", "shape": [n], "data": [p.get("label") for p in predictions]},
        "probability": {"datatype": "FP64", "shape": [n], "data": [p.get("probability") for p in predictions]},
        "probabilities": {
            "datatype": "FP64", "shape": [n, len(labels)],
            "data": [p["probabilities"][lab] for p in predictions if "probabilities" in p for lab in labels],
        },
        "entities": {
            "datatype": "BYTES", "shape": [n], "data": [json.dumps(p.get("entities", [])) for p in predictions],
        },
    }  # fmt: skip
    answer: dict[str, Any] = {
        "model_name": name,
        "model_version": version,
        "outputs": [{"name": out, **tensors[out]} for out in context["outputs"]],
    }
    if context.get("id") is not None:
        answer["id"] = context["id"]
    return answer


def model_metadata(name: str, version: str | None, task: str, labels: list[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the served version, the input tensor and the output tensors."""
    outputs = {
        "label": {"datatype": "BYTES", "shape": [-1]},
        "probability": {"datatype": "FP64", "shape": [-1]},
        "probabilities": {"datatype": "FP64", "shape": [-1, len(labels)], "parameters": {"labels": labels}},
        "entities": {"datatype": "BYTES", "shape": [-1], "parameters": {"content": "JSON list per text"}},
    }
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": f"bertops_{task}",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": out, **outputs[out]} for out in outputs_of(task)],
    }
