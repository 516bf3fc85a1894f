"""``ray start`` with patience: the local stack's Ray head launcher.

    python -m bertops.orchestration.ray_head start --head --block ...   # same arguments as `ray start`

Ray 2.60's ``ray start`` gives the raylet a hard-coded 30 s to register with the GCS, and the raylet waits
only ``raylet_start_wait_time_s`` for its dashboard agent. On a busy 2-core machine (load average 15-20 while
tests run) the agent's Python start-up alone can take longer, and the head aborts. This launcher waits for the
node's registration for up to ``BERTOPS_RAY_START_TIMEOUT_S`` (default 600) instead, then runs Ray's own CLI. It writes ``BERTOPS_RAY_READY_FILE`` once the node is registered.

The node's address (``orchestration.stack_ray_node_ip``) is :func:`node_address`'s ``ray start`` arguments and
environment.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from pathlib import Path
from typing import Any

# Ray 2.60 binds its dashboard's, autoscaler's and dashboard agent's Prometheus HTTP servers to 127.0.0.1 only
# when the node IP is loopback (dashboard/head.py `_setup_metrics`, autoscaler/_private/monitor.py `Monitor`,
# dashboard/modules/reporter/reporter_agent.py: `get_localhost_ip() if is_localhost(ip) else ""`), otherwise to
# every interface, unauthenticated. `ray start` replaces a loopback --node-ip-address with the machine's IP
# (services.resolve_ip_for_localhost -> get_node_ip_address), unless Ray clusters are switched off: then Ray
# keeps the loopback address, as it does on macOS and Windows (ray_constants.ENABLE_RAY_CLUSTER, read only by
# get_node_ip_address and by `ray start` for a worker node, which it then refuses).
ONE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def node_address(node_ip: str) -> tuple[list[str], dict[str, str]]:
    """``ray start`` arguments and environment for a head whose node address is ``node_ip``.

    Loopback: a one-machine Ray (:data:`ONE_MACHINE`) that keeps it, so Ray's Prometheus servers listen on
    loopback too; no other node can join. Any other address: Ray's default, a node others can join.
    """
    one_machine = ipaddress.ip_address(node_ip).is_loopback
    return ["--node-ip-address", node_ip], dict(ONE_MACHINE) if one_machine else {}


def _raylet_died() -> bool:
    """True when this launcher's raylet child has exited (a zombie or gone after it was started).

    Ray's raylet aborts when its dashboard agent misses a fixed ~15 s deadline (``node_manager.cc``, on a busy
    machine); the node then never registers, and waiting for it would only burn the whole timeout.
    """
    import psutil

    raylets = [c for c in psutil.Process().children(recursive=True) if _name(c) == "raylet"]
    return bool(raylets) and all(
        _status(c) in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, None) for c in raylets
    )


def _name(proc: Any) -> str:
    try:
        return str(proc.name())
    except Exception:  # gone meanwhile
        return ""


def _status(proc: Any) -> str | None:
    try:
        return str(proc.status())
    except Exception:  # gone meanwhile
        return None


def _patient_get_node(original: Any, timeout_s: float) -> Any:
    def get_node(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                node = original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                if _raylet_died():  # exit now: the caller (bertops stack up) starts the head again
                    raise RuntimeError("the raylet exited before the node registered") from None
                time.sleep(1)
                continue
            ready = os.environ.get("BERTOPS_RAY_READY_FILE")
            if ready:  # the node is registered: drivers (ray.init) can connect from now on
                Path(ready).write_text(str(os.getpid()))
            return node

    return get_node


def main() -> None:
    import ray._private.services as services
    from ray.scripts.scripts import main as ray_main

    timeout_s = float(os.environ.get("BERTOPS_RAY_START_TIMEOUT_S", "600"))
    services.get_node = _patient_get_node(services.get_node, timeout_s)
    sys.argv = ["ray", *sys.argv[1:]]
    sys.exit(ray_main())


if __name__ == "__main__":
    main()
