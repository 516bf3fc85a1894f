"""A small HTTP client of the serving API: what ``bertops predict`` and a promotion step call.

::

    from bertops.serving.client import notify_reload, predict
    predict("http://127.0.0.1:8000", ["a fine film"])   # -> {"model": ..., "version": ..., "predictions": [...]}
    predict("http://127.0.0.1:8000", ["Anna flew to Paris"], model="bert-ner")   # predictions: [{"entities"}]
    notify_reload("http://127.0.0.1:8000")              # the service follows the moved alias now
    notify_reload("http://127.0.0.1:8000", model="bert-ner")
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx


class ServingClientError(RuntimeError):
    """The service refused or failed a call; the message carries its status and error text."""

    def __init__(self, url: str, status: int | None, message: str) -> None:
        super().__init__(f"{url}: {status or 'no answer'}: {message}")
        self.status = status


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text
        raise ServingClientError(str(resp.request.url), resp.status_code, message)
    return resp.json()


def predict(
    url: str,
    texts: list[str],
    timeout: float = 30.0,
    request_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """``POST /predict`` (the default model), or ``POST /models/<model>/predict``: the predictions for
    ``texts`` from the service at ``url``."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    path = f"/models/{model}/predict" if model else "/predict"
    try:
        resp = httpx.post(_url(url, path), json={"texts": texts}, timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise ServingClientError(_url(url, path), None, f"{type(exc).__name__}: {exc}") from None
    return _check(resp)


def notify_reload(url: str, timeout: float = 300.0, model: str | None = None) -> dict[str, Any]:
    """``POST /admin/reload``: the replica that answers follows the alias of the default model (or of
    ``model``) now. Allowed from loopback, or from
    anywhere with the ``BERTOPS_SERVING_ADMIN_TOKEN`` shared secret (sent when set in this environment).

    Returns ``{"switched", "version", "previous_version", "message"}``. Other replicas of a multi-replica
    deployment follow on their next poll (``serving.poll_interval_s``).
    """
    try:
        token = os.environ.get("BERTOPS_SERVING_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        params = {"model": model} if model else None
        resp = httpx.post(_url(url, "/admin/reload"), timeout=timeout, headers=headers, params=params)
    except httpx.HTTPError as exc:
        raise ServingClientError(_url(url, "/admin/reload"), None, f"{type(exc).__name__}: {exc}") from None
    return _check(resp)


def wait_ready(url: str, timeout: float = 300.0, interval: float = 1.0) -> dict[str, Any]:
    """Poll ``GET /readyz`` until a model is loaded; return its body. Raises ServingClientError on timeout."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(_url(url, "/readyz"), timeout=5)
            if resp.status_code == 200:
                return resp.json()
            last = resp.text
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise ServingClientError(_url(url, "/readyz"), None, f"not ready after {timeout}s: {last}")
