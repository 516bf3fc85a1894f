"""HTTP client of the live-trial admin routes (:mod:`bertops.serving.live`): what the retrain's shadow and
canary steps call, and what an operator can call by hand.

::

    from bertops.serving import live_client as live
    live.start_shadow(url, "bert-sentiment", "7")      # load + warm up v7, mirror the champion's requests to it
    live.candidate(url, "bert-sentiment")["report"]    # the shadow figures so far
    live.stop_shadow(url, "bert-sentiment")
    live.set_canary(url, "bert-sentiment", 5, limits=cfg.promotion.canary.model_dump())
    live.rollback(url, "bert-sentiment")               # the champion answers everything again

Loopback callers, or any caller with the ``BERTOPS_SERVING_ADMIN_TOKEN`` bearer token (sent when set here).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from bertops.config import ShadowConfig
from bertops.serving.client import ServingClientError, _check, _url


def _call(
    method: str, url: str, path: str, params: dict[str, Any], body: Any = None, timeout: float = 300.0
) -> dict[str, Any]:
    token = os.environ.get("BERTOPS_SERVING_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request(
            method, _url(url, path), params=params, json=body, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise ServingClientError(_url(url, path), None, f"{type(exc).__name__}: {exc}") from None
    return _check(resp)


def start_shadow(url: str, model: str, version: str, shadow: ShadowConfig | None = None) -> dict[str, Any]:
    """Load, warm up and shadow ``version`` with ``shadow``'s queue and call sizes (default: the config's
    defaults). Raises ServingClientError 422 (with why) when it cannot be served."""
    sh = shadow or ShadowConfig()
    params = {"model": model, "version": version, "queue_size": sh.queue_size, "batch_texts": sh.batch_texts,
              "quiet_ms": sh.quiet_ms}  # fmt: skip
    return _call("POST", url, "/admin/shadow", params)


def stop_shadow(url: str, model: str) -> dict[str, Any]:
    return _call("POST", url, "/admin/shadow/stop", {"model": model})


def candidate(url: str, model: str) -> dict[str, Any]:
    """``{"phase", "candidate_version", "champion_version", "report", "canary", "ended", ...}``."""
    return _call("GET", url, "/admin/candidate", {"model": model}, timeout=30.0)


def set_canary(url: str, model: str, percent: float, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send ``percent`` of the callers to the candidate, rolled back by the service past ``limits``."""
    return _call("POST", url, "/admin/canary", {"model": model, "percent": percent}, body=limits or {})


def rollback(url: str, model: str) -> dict[str, Any]:
    return _call("POST", url, "/admin/rollback", {"model": model})
