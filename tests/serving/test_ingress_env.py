"""``serving.ingress`` as the environment of the Ray processes bertops starts (pure; no Ray)."""

from __future__ import annotations

from pathlib import Path

from bertops.config import ServingConfig
from bertops.serving.ingress import HAPROXY_SWITCHES, ray_process_env


def test_proxy_ingress_changes_nothing() -> None:
    assert ray_process_env(ServingConfig()) == {}


def test_haproxy_ingress_sets_the_switches_and_private_files_and_ports() -> None:
    a = ray_process_env(ServingConfig(ingress="haproxy"))
    b = ray_process_env(
        ServingConfig(ingress="haproxy", haproxy_stats_port=18404, haproxy_metrics_port=19101)
    )
    for env in (a, b):
        assert {k: env[k] for k in HAPROXY_SWITCHES} == HAPROXY_SWITCHES
        state = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        assert state.is_dir()
        for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE"):
            assert Path(env[f"RAY_SERVE_HAPROXY_{key}"]).parent == state
        # Ray adds a 56-character node-id folder; HAProxy refuses socket paths over 97 bytes.
        assert len(env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) + 57 <= 97
    # Two Rays on one machine do not share HAProxy's files (Ray's default is one fixed /tmp/haproxy-serve).
    assert a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] != b["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert int(a["RAY_SERVE_HAPROXY_STATS_PORT"]) > 0 and int(a["RAY_SERVE_HAPROXY_METRICS_PORT"]) > 0
    assert (b["RAY_SERVE_HAPROXY_STATS_PORT"], b["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("18404", "19101")
