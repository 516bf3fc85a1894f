"""The stack's Ray head launcher notices a raylet that died during start-up (instead of waiting out its timeout).

The check looks at the launcher's own child processes, so it runs in a fresh interpreter here: the test session
itself has other raylets below it (the session's Ray head).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
