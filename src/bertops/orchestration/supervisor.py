"""The local stack's supervisor: a crashed service is started again, on its own port, by itself.

``bertops stack up`` starts it; ``bertops stack down`` stops it first. Every ``interval_s`` it checks the
recorded process of MLflow, the Ray head and Airflow; when one is gone (killed, crashed) it runs the stack's ``up``
under the stack's lock, which clears what the dead one left running and starts it again on the port it had
(``.bertops/ports.json``), then redeploys the serving application when the Ray head was the one restarted. The
clients keep their addresses, so a Ray job or a serving replica reaches MLflow again without a restart of its own.
What it did goes to ``.bertops/logs/supervisor.log``.

    python -m bertops.orchestration.supervisor --root <checkout> --params <checkout>/params.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bertops.config import load_config
from bertops.orchestration.stack import SUPERVISED, StackError, StackPaths, alive, read_state, up

log = logging.getLogger("bertops.supervisor")


def dead_services(paths: StackPaths) -> list[str]:
    """The supervised services whose recorded process is gone (none once the stack was brought down)."""
    services = read_state(paths).get("services", {})
    return [name for name in SUPERVISED if name in services and not alive(services[name].get("pid"))]


def supervise(root: Path, params: Path, serving: bool = True, interval_s: float = 5.0) -> None:
    """Watch the stack of ``root`` until its state file is gone (``down``), restarting what died."""
    cfg = load_config(params)
    paths = StackPaths.of(cfg, root)
    log.info("supervising the stack in %s every %.0f s", paths.state, interval_s)
    while paths.stack_file.exists():
        dead = dead_services(paths)
        if dead:
            started = time.monotonic()
            log.warning("%s not running: starting it again", ", ".join(dead))
            try:
                up(cfg, root, serving=serving, on_step=log.info, params=params, supervise=False)
                log.info("%s running again after %.1f s", ", ".join(dead), time.monotonic() - started)
            except StackError as exc:  # e.g. its port taken meanwhile: say so, try again next round
                log.error("restarting %s failed: %s", ", ".join(dead), exc)
        time.sleep(interval_s)
    log.info("the stack's state file is gone (bertops stack down): supervisor exits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--no-serving", dest="serving", action="store_false")
    parser.add_argument("--interval-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    supervise(args.root, args.params, args.serving, args.interval_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
