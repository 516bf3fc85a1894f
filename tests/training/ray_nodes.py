"""Real Ray nodes for the training tests: ``ray start --block`` processes this test session owns.

Without the dashboard (the training tests do not need the Jobs API), every port explicit, and a retry: on a
loaded shared machine Ray's own start-up deadlines (raylet registration, agent port files) are sometimes
missed, and a second attempt usually succeeds. Processes are stopped by their own process group only.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, start_ray_node, stop_group


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


@dataclass
class RayNodes:
    """A head (and optional worker nodes) started with ``ray start --block``; ``address`` is the GCS."""

    address: str
    temp_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def add_node(self, *args: str, name: str = "node") -> None:
        """Start a worker node and wait until it is up (one at a time: raylets starting together on 2 cores
        can miss Ray's fixed wait for their dashboard agent); retried if it dies starting."""
        self.procs.append(
            start_ray_node(
                ["--address", self.address, *args, *_ports(), "--object-store-memory", str(100 * 1024**2)],
                self.temp_dir,
                name,
            )
        )

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


def start_head(num_cpus: int, num_gpus: int = 0) -> RayNodes:
    """Start a head node (retried on a start-up failure) and connect this process to it (``ray.init``)."""
    import ray

    temp_dir = Path(tempfile.mkdtemp(prefix="ray_tr_", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    proc = start_ray_node(
        ["--head", "--port", address.split(":")[1], "--include-dashboard", "false",
         "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--temp-dir", str(temp_dir),
         "--ray-client-server-port", str(free_port()), "--object-store-memory", str(200 * 1024**2), *_ports()],
        temp_dir, "head",
    )  # fmt: skip
    nodes = RayNodes(address=address, temp_dir=temp_dir, procs=[proc])
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception:
        nodes.stop()
        raise
    return nodes
