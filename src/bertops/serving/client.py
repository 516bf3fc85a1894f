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


# Answers that mean "no replica could answer this time" (a replica crashed mid-request, the replacement is not
# up yet): a prediction is idempotent, so it is sent again rather than failed.
RETRYABLE = (500, 502, 503, 504)


def predict(
    url: str,
    texts: list[str],
    timeout: float = 30.0,
    request_id: str | None = None,
    model: str | None = None,
    retry_for_s: float = 60.0,
) -> dict[str, Any]:
    """``POST /predict`` (the default model), or ``POST /models/<model>/predict``: the predictions for
    ``texts`` from the service at ``url``.

    Predictions are idempotent: a connection error or a 500/502/503/504 (a replica that crashed mid-request,
    or one not yet replaced) is retried, after ``Retry-After`` when the service sends one, else with a growing
    pause, for up to ``retry_for_s`` seconds. A 4xx is the caller's and is raised at once."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    path = f"/models/{model}/predict" if model else "/predict"
    deadline, pause = time.monotonic() + retry_for_s, 0.2
    while True:
        try:
            resp = httpx.post(_url(url, path), json={"texts": texts}, timeout=timeout, headers=headers)
        except httpx.HTTPError as exc:
            if time.monotonic() + pause > deadline:
                raise ServingClientError(_url(url, path), None, f"{type(exc).__name__}: {exc}") from None
        else:
            if resp.status_code not in RETRYABLE or time.monotonic() + pause > deadline:
                return _check(resp)
            pause = _retry_after(resp, pause)
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return max(0.0, min(float(resp.headers.get("retry-after", default)), 30.0))
    except ValueError:  # an HTTP date: use the default pause
        return default


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


def flush_records(url: str, timeout: float = 60.0) -> int:
    """``POST /admin/flush``: the replica that answers writes the texts it still holds to the monitoring store now;
    returns how many. (With several replicas only the one that answers flushes.)"""
    try:
        token = os.environ.get("BERTOPS_SERVING_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = httpx.post(_url(url, "/admin/flush"), timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise ServingClientError(_url(url, "/admin/flush"), None, f"{type(exc).__name__}: {exc}") from None
    return int(_check(resp)["written"])


def wait_ready(
    url: str, timeout: float = 300.0, interval: float = 1.0, until_alias_unset: bool = False
) -> dict[str, Any]:
    """Poll ``GET /readyz`` until a model is loaded; return its body. Raises ServingClientError on timeout, or,
    with ``until_alias_unset``, as soon as the service says no version has its alias (nothing is loading)."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(_url(url, "/readyz"), timeout=5)
            if resp.status_code == 200:
                return resp.json()
            last = resp.text
            if until_alias_unset and resp.status_code == 503:
                try:  # the replica's JSON; a proxy's own 503 (no replica yet) is HTML: keep waiting
                    body = resp.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("alias_unset"):
                    raise ServingClientError(_url(url, "/readyz"), 503, body.get("error", last))
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise ServingClientError(_url(url, "/readyz"), None, f"not ready after {timeout}s: {last}")
