"""``serving.ingress`` as the environment of the Ray processes bertops starts (pure; no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from bertops.config import ServingConfig
from bertops.serving.ingress import HAPROXY_SWITCHES, ray_process_env


def test_proxy_ingress_changes_nothing() -> None:
    assert ray_process_env(ServingConfig(ingress="proxy")) == {}


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


def test_haproxy_runs_through_the_launcher_that_binds_its_admin_listeners() -> None:
    env = ray_process_env(ServingConfig(ingress="haproxy", haproxy_admin_host="127.0.0.2"))
    launcher = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert launcher.parent == Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert launcher.stat().st_mode & 0o111, "Ray refuses a binary path that is not executable"
    script = launcher.read_text()
    assert "-m bertops.serving.haproxy_launcher --host 127.0.0.2" in script and '"$@"' in script


def test_rewrite_binds_touches_only_the_stats_and_prometheus_listeners() -> None:
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    from bertops.serving.haproxy_launcher import rewrite_binds

    # Ray's own template, with its placeholders filled the simple way: which sections bind what.
    config = (
        HAPROXY_CONFIG_TEMPLATE.replace("{{ config.metrics_port }}", "9101")
        .replace("{{ config.stats_port }}", "8404")
        .replace("{{ config.frontend_host }}:{{ config.frontend_port }}", "*:8000")
    )
    out = rewrite_binds(config, "127.0.0.1")
    binds = [line.strip() for line in out.splitlines() if line.strip().startswith("bind ")]
    assert "bind 127.0.0.1:9101" in binds and "bind 127.0.0.1:8404" in binds
    assert "bind *:8000" in binds, "the HTTP frontend keeps serving.host"
    assert not any(b.startswith(("bind *:9101", "bind :9101", "bind *:8404")) for b in binds)
    assert out.count("\n") == config.count("\n")


def test_haproxy_gives_up_with_a_503_and_retry_after_not_rays_500(tmp_path: Path) -> None:
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    from bertops.serving.haproxy_launcher import rewrite_errorfiles, write_error_files

    # Ray's template, with its error file filled in: 502, 503 and 504 all answered by Ray's one 500.http.
    config = HAPROXY_CONFIG_TEMPLATE.replace("{{ config.error_file_path }}", "/tmp/x/500.http")
    files = write_error_files(tmp_path)
    out = rewrite_errorfiles(config, files)
    lines = [line.split() for line in out.splitlines() if line.strip().startswith("errorfile ")]
    assert lines == [["errorfile", str(s), str(files[s])] for s in (502, 503, 504)]
    assert "500.http" not in out and out.count("\n") == config.count("\n")
    for status, expected in ((502, 503), (503, 503), (504, 504)):
        head, body = files[status].read_bytes().split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {expected} ")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert int(headers["Retry-After"]) > 0 and headers["Content-Type"] == "application/json"
        assert int(headers["Content-Length"]) == len(body)
        assert "send it again" in json.loads(body)["error"]


def test_haproxy_retries_a_request_whose_replica_died_past_the_mark_down() -> None:
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT

    env = ray_process_env(ServingConfig(ingress="haproxy"))
    assert set(env["RAY_SERVE_HAPROXY_RETRY_ON"].split()) == {"conn-failure", "empty-response"}
    # Ray marks a server down after that many layer-4 errors: the retries outlast it to reach a live server.
    assert int(env["RAY_SERVE_HAPROXY_RETRIES"]) > RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT


def test_haproxy_reads_each_request_whole_so_that_it_can_send_it_again() -> None:
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    from bertops.serving.haproxy_launcher import buffer_requests

    out = buffer_requests(HAPROXY_CONFIG_TEMPLATE)
    defaults = out.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "    option http-buffer-request\n" in defaults and "retry-on" in defaults
    assert out.count("http-buffer-request") == 1 and buffer_requests(out) == out
