"""Local network helpers shared by the layers that start processes (serving's ingress, the local stack)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, on ``host`` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_or_free(port: int, host: str = "127.0.0.1") -> int:
    """``port`` when nothing listens on it, else any free port (a shared machine may have it taken)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return port
        except OSError:
            return free_port(host)
