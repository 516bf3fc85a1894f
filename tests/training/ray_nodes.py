"""Real Ray nodes for the training tests: ``ray start --block`` processes this test session owns.

Without the dashboard (the training tests do not need the Jobs API), every port explicit, and a retry: on a
loaded shared machine Ray's own start-up deadlines (raylet registration, agent port files) are sometimes
missed, and a second attempt usually succeeds. Processes are stopped by their own process group only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT, free_port, stop_group

RAY = str(Path(sys.executable).parent / "ray")


def _ports() -> list[str]:
    return [
        "--node-ip-address", "127.0.0.1",
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--disable-usage-stats",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": f"{REPO_ROOT / 'src'}:{REPO_ROOT}",
        # More patience for slow agent start-up on a busy machine (ray-project/ray#65983).
        "RAY_agent_register_timeout_ms": os.environ.get("RAY_agent_register_timeout_ms", "120000"),  # noqa: SIM112
    }
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayNodes:
    """A head (and optional worker nodes) started with ``ray start --block``; ``address`` is the GCS."""

    address: str
    temp_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def add_node(self, *args: str, name: str = "node", attempts: int = 3) -> None:
        """Start a worker node and wait until ``ray start`` says it is up; retried if it dies starting.

        Nodes are added one at a time: two raylets starting together on 2 cores can each miss Ray's fixed
        wait for their dashboard agent's port file (``node_manager.cc``), which kills the raylet.
        """
        last = ""
        for attempt in range(attempts):
            log_path = self.temp_dir / f"{name}.{attempt}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [RAY, "start", "--block", "--address", self.address, *args, *_ports(),
                     "--object-store-memory", str(100 * 1024**2)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env(),
                )  # fmt: skip
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if "Ray runtime started" in log_path.read_text(errors="replace"):
                    self.procs.append(proc)
                    return
                time.sleep(1)
            last = log_path.read_text(errors="replace")[-3000:]
            stop_group(proc, timeout=30)
        raise RuntimeError(f"Ray node {name} did not start in {attempts} attempts; last log:\n{last}")

    def pids(self) -> set[int]:
        """Every process these nodes started (raylets, workers, agents)."""
        import psutil

        out: set[int] = set()
        for p in self.procs:
            try:
                out |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_group(p, timeout=60)


def start_head(num_cpus: int, num_gpus: int = 0, attempts: int = 3) -> RayNodes:
    """Start a head node and connect this process to it (``ray.init``); retried on a start-up timeout."""
    import ray

    last = ""
    for _ in range(attempts):
        temp_dir = Path(tempfile.mkdtemp(prefix="ray_tr_", dir="/tmp"))
        address = f"127.0.0.1:{free_port()}"
        log_path = temp_dir / "head.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [RAY, "start", "--head", "--block", "--port", address.split(":")[1], "--include-dashboard", "false",
                 "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--temp-dir", str(temp_dir),
                 "--ray-client-server-port", str(free_port()), "--object-store-memory", str(200 * 1024**2),
                 *_ports()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env(),
            )  # fmt: skip
        nodes = RayNodes(address=address, temp_dir=temp_dir, procs=[proc])
        deadline = time.monotonic() + 240
        # Connect only once `ray start` says the node is up: ray.init against a head that died waits long.
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in log_path.read_text(errors="replace"):
                ray.init(address=address, log_to_driver=False)
                return nodes
            time.sleep(1)
        last = log_path.read_text(errors="replace")[-3000:]
        nodes.stop()
    raise RuntimeError(f"Ray head did not start in {attempts} attempts; last log:\n{last}")
