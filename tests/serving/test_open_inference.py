"""Open Inference Protocol v2 bodies (pure): the BYTES input tensor in, the output tensors out."""

from __future__ import annotations

import json

import pytest

from bertops.serving.open_inference import infer_response, model_metadata, parse_infer_request
from bertops.serving.schemas import BadRequest, RequestLimits

LIMITS = RequestLimits(max_texts=4, max_text_bytes=20, max_body_bytes=20_000)


def body(**tensor) -> bytes:
    return json.dumps({"id": "7", "inputs": [{"name": "text", "datatype": "BYTES", **tensor}]}).encode()


def test_flat_and_nested_text_tensors_parse_to_the_texts() -> None:
    texts, ctx = parse_infer_request(body(shape=[2], data=["a", "b"]), LIMITS, "classification")
    assert texts == ["a", "b"] and ctx == {"id": "7", "outputs": ["label", "probability", "probabilities"]}
    texts, _ = parse_infer_request(body(shape=[2, 1], data=[["a"], ["b"]]), LIMITS, "classification")
    assert texts == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (body(datatype="FP32", shape=[1], data=[1.0]), 422, "inputs[0].datatype must be 'BYTES'"),
        (body(shape=[3], data=["a", "b"]), 422, "has 2 elements; shape [3] needs 3"),
        (body(shape=[1, 2], data=["a", "b"]), 422, "must be [n] or [n, 1]"),
        (body(shape=[2], data=["a", 3]), 422, "inputs[0].data[1]: expected a string, got number"),
        (body(shape=[5], data=list("abcde")), 413, "limit is 4"),
        (body(shape=[1], data=["x" * 21]), 413, "inputs[0].data[0] is 21 UTF-8 bytes"),
        (b'{"inputs": []}', 422, "exactly one tensor"),
        (b"[" * 5000 + b"]" * 5000, 400, "nested more than 32 levels"),
        (b'{"inputs": [', 400, "malformed JSON"),
    ],
)
def test_bad_infer_requests_name_the_field(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_infer_request(raw, LIMITS, "classification")
    assert err.value.status == status and message in err.value.message


def test_requested_outputs_are_checked_and_kept() -> None:
    raw = json.dumps({
        "inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
        "outputs": [{"name": "label"}],
    }).encode()  # fmt: skip
    assert parse_infer_request(raw, LIMITS, "classification")[1]["outputs"] == ["label"]
    wrong = raw.replace(b'"label"', b'"entities"')
    with pytest.raises(BadRequest, match="unknown output"):
        parse_infer_request(wrong, LIMITS, "classification")


def test_classifier_answer_has_row_major_probabilities_in_label_order() -> None:
    labels = ["neg", "neu", "pos"]
    preds = [
        {"label": "pos", "probability": 0.7, "probabilities": {"neg": 0.1, "neu": 0.2, "pos": 0.7}},
        {"label": "neg", "probability": 0.5, "probabilities": {"neg": 0.5, "neu": 0.3, "pos": 0.2}},
    ]
    ctx = {"id": "7", "outputs": ["label", "probability", "probabilities"]}
    answer = infer_response("m", "3", labels, preds, ctx)
    assert answer["model_name"] == "m" and answer["model_version"] == "3" and answer["id"] == "7"
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["label"] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["pos", "neg"]}
    assert out["probabilities"]["shape"] == [2, 3]
    assert out["probabilities"]["data"] == [0.1, 0.2, 0.7, 0.5, 0.3, 0.2]


def test_ner_answer_and_metadata() -> None:
    preds = [{"entities": [{"text": "Anna", "type": "person", "start": 0, "end": 4, "score": 0.9}]}]
    answer = infer_response("ner", "1", [], preds, {"id": None, "outputs": ["entities"]})
    assert "id" not in answer
    assert json.loads(answer["outputs"][0]["data"][0])[0]["text"] == "Anna"
    meta = model_metadata("ner", "1", "ner", [])
    assert meta["versions"] == ["1"] and [o["name"] for o in meta["outputs"]] == ["entities"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
