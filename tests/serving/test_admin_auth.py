"""Who may call POST /admin/reload from another host: only a caller with the shared bearer token."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from bertops.serving.app import ADMIN_TOKEN_ENV, _token_ok


def request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "headers": headers, "client": ("10.0.0.7", 5555)})


def test_no_token_configured_refuses_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert not _token_ok(request("Bearer "))
    assert not _token_ok(request(None))


def test_only_the_right_token_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    assert _token_ok(request("Bearer s3cret"))
    assert not _token_ok(request("Bearer wrong"))
    assert not _token_ok(request(None))
