"""The listening sockets of a running ``bertops stack up``, and whether each beyond loopback is one of Ray's
token-authenticated ports that refuses an unauthenticated request (probed, per port). The tests are in
tests/test_doc_commands.py, on its live stack.

The stack's processes are the process groups it started (MLflow, the Ray head with everything Ray spawns,
Airflow's components) and their descendants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import httpx
import psutil

# An unauthenticated call to any of these on a Ray gRPC port must come back UNAUTHENTICATED (Ray's server
# interceptor checks the token before the method runs; an unknown method would say UNIMPLEMENTED instead).
RAY_GRPC_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetClusterId",
    "/ray.rpc.NodeManagerService/GetResourceLoad",
    "/ray.rpc.CoreWorkerService/GetObjectStatus",
    "/ray.rpc.ReporterService/GetTraceback",
    "/ray.rpc.LogService/ListLogs",
    "/ray.rpc.RayletDriver/Init",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.serve.ASGIService/HandleRequest",  # a Serve replica's inter-deployment server
)
LOOPBACK = ("127.", "::1", "::ffff:127.")


def stack_processes(root: Path) -> dict[int, str]:
    """pid -> command line of every process of the stack: its services' process groups and descendants."""
    state = json.loads((root / ".bertops" / "stack.json").read_text(encoding="utf-8"))
    leaders = [s["pid"] for s in state["services"].values() if s.get("pid")]
    groups = set()
    for pid in leaders:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_group = os.getpgid(proc.pid) in groups
        except ProcessLookupError:
            continue
        if in_group or proc.pid in leaders:
            found[proc.pid] = " ".join(proc.info["cmdline"] or [])
            for child in proc.children(recursive=True):
                try:
                    found[child.pid] = " ".join(child.cmdline())
                except psutil.NoSuchProcess:
                    continue
    return found


def listeners(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state owned by ``pids``."""
    return sorted(
        {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
         if c.status == psutil.CONN_LISTEN and c.pid in pids}
    )  # fmt: skip


def refuses_without_token(address: str, port: int) -> str | None:
    """Why an unauthenticated request to ``address:port`` counts as refused, or None if it was not."""
    if address in ("0.0.0.0", "::"):  # every interface: try it where it is reachable for sure
        host = "127.0.0.1"
    elif address.startswith("::ffff:"):  # an IPv4 address on an IPv6 socket
        host = address.removeprefix("::ffff:")
    else:
        host = f"[{address}]" if ":" in address else address
    try:  # an HTTP/1.1 service (Ray's aiohttp agents): 401/403 from Ray's token middleware
        r = httpx.get(f"http://{host}:{port}/", timeout=10)
        return f"HTTP {r.status_code}" if r.status_code in (401, 403) else None
    except httpx.HTTPError:
        pass  # not HTTP/1.1: a gRPC server
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in RAY_GRPC_METHODS:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=10)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return f"gRPC UNAUTHENTICATED on {method}"
                continue
            return None  # answered without a token
    return None


def ray_metrics_exporter(address: str, port: int, command: str) -> bool:
    """True for one of Ray's Prometheus HTTP servers: a Ray process answering ``/metrics`` without a token."""
    host = "127.0.0.1" if address in ("0.0.0.0", "::") else address.removeprefix("::ffff:")
    try:
        r = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
    except httpx.HTTPError:
        return False
    return "ray" in command.lower() and r.status_code == 200 and "# TYPE" in r.text


def beyond_loopback(root: Path) -> dict[str, list]:
    """The stack's listeners beyond loopback, sorted: ``refused`` (Ray ports that refuse a request without
    the token), ``ray_metrics`` (Ray's unauthenticated Prometheus servers), ``bad`` (anything else); and
    ``loopback_ray_metrics``, Ray's Prometheus servers on loopback."""
    procs = stack_processes(root)
    sockets = listeners(set(procs))
    assert sockets, "found no listening socket of the stack"
    out: dict[str, list] = {"all": sockets, "loopback_ray_metrics": []}
    out.update(refused=[], ray_metrics=[], bad=[])
    for address, port, pid in sockets:
        if address.startswith(LOOPBACK):
            if ray_metrics_exporter(address, port, procs[pid]):
                out["loopback_ray_metrics"].append((address, port, procs[pid]))
            continue
        command = procs[pid]
        why = refuses_without_token(address, port)
        if why is not None and "ray" in command.lower():
            out["refused"].append((address, port, why))
        elif ray_metrics_exporter(address, port, command):
            out["ray_metrics"].append((address, port, command[:80]))
        else:
            out["bad"].append((address, port, command[:120], why))
    return out
