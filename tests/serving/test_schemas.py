"""Input checks of the predict body: every rejection is a 4xx whose message names the field."""

from __future__ import annotations

import json

import pytest

from bertops.serving.schemas import BadRequest, RequestLimits, check_content_length, parse_predict_body

LIMITS = RequestLimits(max_texts=3, max_text_bytes=10, max_body_bytes=200)


def test_valid_body_returns_the_texts_in_order() -> None:
    assert parse_predict_body(b'{"texts": ["b", "a", ""]}', LIMITS) == ["b", "a", ""]


def test_limits_count_utf8_bytes_not_characters() -> None:
    assert parse_predict_body(json.dumps({"texts": ["é" * 5]}).encode(), LIMITS) == ["é" * 5]  # 10 bytes
    with pytest.raises(BadRequest, match=r"texts\[0\] is 12 UTF-8 bytes"):
        parse_predict_body(json.dumps({"texts": ["é" * 6]}).encode(), LIMITS)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "malformed JSON at line 1 column 2"),
        (b"  ", 400, "empty request body"),
        (b'{"texts": ["\xff"]}', 400, "not UTF-8"),
        (b"[1]", 422, "got array"),
        (b'{"texts": ["a"], "extra": 1}', 422, "unknown field(s) ['extra']"),
        (b"{}", 422, "missing field 'texts'"),
        (b'{"texts": {"a": 1}}', 422, "got object"),
        (b'{"texts": []}', 422, "empty list"),
        (b'{"texts": ["a", true]}', 422, "texts[1]: expected a string, got boolean"),
        (b'{"texts": ["a", "b", "c", "d"]}', 413, "has 4 items; the limit is 3"),
        (b'{"texts": ["' + b"x" * 300 + b'"]}', 413, "over 200 bytes"),
    ],
)
def test_bad_bodies(body: bytes, status: int, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_predict_body(body, LIMITS)
    assert err.value.status == status
    assert message in err.value.message


def test_content_length_is_checked_before_reading() -> None:
    check_content_length(None, LIMITS)
    check_content_length("200", LIMITS)
    with pytest.raises(BadRequest, match="201 bytes; the limit is 200") as err:
        check_content_length("201", LIMITS)
    assert err.value.status == 413
    with pytest.raises(BadRequest, match="not an integer"):
        check_content_length("lots", LIMITS)


def test_a_number_python_cannot_read_is_a_400_not_a_500() -> None:
    """Over 4,300 digits Python refuses to convert an integer (CVE-2020-10735): a ValueError, not a decode error."""
    big = RequestLimits(max_texts=3, max_text_bytes=10, max_body_bytes=100_000)
    with pytest.raises(BadRequest) as err:
        parse_predict_body(b'{"texts": ["a"], "n": ' + b"7" * 5000 + b"}", big)
    assert err.value.status == 400 and "a value in the body cannot be read" in err.value.message


def test_a_lone_surrogate_anywhere_is_a_400() -> None:
    with pytest.raises(BadRequest) as err:
        parse_predict_body(b'{"texts": ["ok", "a\\udfffb"]}', LIMITS)
    assert err.value.status == 400 and "body.texts[1] holds a lone surrogate" in err.value.message
    assert "at character 1" in err.value.message
    # a proper surrogate pair is one astral character: fine
    assert parse_predict_body(b'{"texts": ["\\ud83d\\ude42"]}', LIMITS) == ["\U0001f642"]
