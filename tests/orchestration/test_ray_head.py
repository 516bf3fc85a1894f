"""The stack's Ray head launcher notices a raylet that died during start-up (instead of waiting out its timeout).

The check looks at the launcher's own child processes, so it runs in a fresh interpreter here: the test session
itself has other raylets below it (the session's Ray head).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = """
import subprocess, sys, time
from bertops.orchestration.ray_head import _raylet_died
seen = [_raylet_died()]                       # no raylet child yet: still starting
live = subprocess.Popen([sys.argv[1], "30"])
time.sleep(0.5)
seen.append(_raylet_died())                   # running
live.kill()
time.sleep(0.5)                               # not reaped: a zombie, as when a raylet aborts under `ray start`
seen.append(_raylet_died())
live.wait()
print(seen)
"""


def test_a_dead_raylet_child_is_noticed_and_a_live_one_is_not(tmp_path: Path) -> None:
    raylet = tmp_path / "raylet"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", raylet)
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(raylet)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[False, False, True]", out.stderr


def test_a_loopback_node_address_makes_a_one_machine_ray_that_keeps_it() -> None:
    import ray._private.ray_constants as ray_constants

    from bertops.orchestration.ray_head import node_address

    args, env = node_address("127.0.0.1")
    assert args == ["--node-ip-address", "127.0.0.1"]
    # The switch is Ray's own name for it, and what `ray start` then does with a loopback address: keep it.
    assert env == {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}
    code = "import ray._private.services as s; print(s.resolve_ip_for_localhost('127.0.0.1'))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PATH": ""}, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "127.0.0.1"
    assert node_address("192.0.2.7") == (["--node-ip-address", "192.0.2.7"], {})


def test_the_node_address_must_be_an_ip_address() -> None:
    from pydantic import ValidationError

    from bertops.config import OrchestrationConfig

    with pytest.raises(ValidationError, match="stack_ray_node_ip"):
        OrchestrationConfig(stack_ray_node_ip="localhost:6379")
