"""MLflow's scoring protocol (``POST /invocations``), answered by MLflow's own scoring code.

``mlflow models serve`` answers ``/invocations`` with :func:`mlflow.pyfunc.scoring_server.invocations`:
JSON with ``inputs``, ``instances``, ``dataframe_split`` or ``dataframe_records`` (plus ``params``), CSV or
Parquet, the same model signature checks, the same ``{"predictions": ...}`` answer and the same
``{"error_code", "message"}`` errors. Calling that function on the served version's pyfunc gives an MLflow
client identical answers, so it switches from ``mlflow models serve`` to bertops by URL alone::

    curl -H 'Content-Type: application/json' -d '{"inputs": ["a fine film"]}' http://127.0.0.1:8000/invocations

Two differences, both where ``mlflow models serve`` answers 500: a request without ``Content-Type`` gets 415
(MLflow's message), and JSON nested thousands of levels deep gets 400. MLflow is imported inside the
function: importing this module costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bertops.serving.schemas import NESTING_MESSAGE, BadRequest, check_json_depth, check_unicode_json

SUPPORTED = ["text/csv", "application/json", "application/vnd.apache.parquet"]


@dataclass(frozen=True)
class ScoringAnswer:
    status: int
    body: bytes
    media_type: str


def invoke(pyfunc: Any, body: bytes, content_type: str | None) -> ScoringAnswer:
    """``POST /invocations`` on ``pyfunc`` (an ``mlflow.pyfunc.PyFuncModel``) as ``mlflow models serve`` does.
    Runs the model: call it in a worker thread."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    if not content_type:
        message = f"This predictor only supports the following content types: Types: {SUPPORTED}. Got 'None'."
        return ScoringAnswer(415, message.encode(), "text/plain")
    try:
        check_json_depth(body)
        if "json" in content_type:
            check_unicode_json(body)
    except BadRequest as exc:
        return ScoringAnswer(400, json.dumps({"error_code": "BAD_REQUEST", "message": exc.message}).encode(),
                             "application/json")  # fmt: skip
    try:
        result = scoring_server.invocations(body, content_type, pyfunc, pyfunc.metadata.get_input_schema())
    except MlflowException as exc:
        return ScoringAnswer(exc.get_http_status_code(), exc.serialize_as_json().encode(), "application/json")
    except RecursionError:
        error = {"error_code": "BAD_REQUEST", "message": NESTING_MESSAGE}
        return ScoringAnswer(400, json.dumps(error).encode(), "application/json")
    response = result.response if isinstance(result.response, bytes) else str(result.response).encode()
    return ScoringAnswer(result.status, response, result.mimetype)
