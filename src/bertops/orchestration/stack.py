"""The local stack: ``bertops stack up|down|status`` (``make up`` / ``make down``).

Starts, bound to 127.0.0.1, each in its own process group (so ``down`` stops exactly what ``up`` started):

- an MLflow tracking server: SQLite ``<state>/mlflow-server/mlflow.db`` + artifacts ``<state>/mlflow-server/artifacts``
  (its own store: the embedded default without a stack is ``<state>/mlflow/mlflow.db``);
- a Ray head with the dashboard (Jobs API), temp dir ``/tmp/bertops_ray_<hash>`` (Ray needs a short path);
- Airflow (what ``airflow standalone`` runs but the triggerer: scheduler, dag-processor, API server; LocalExecutor;
  SQLite; the scheduler's log server off, see :func:`airflow_command`) with
  ``AIRFLOW_HOME=<state>/airflow`` and ``dags/`` of this checkout; the pool ``dvc`` (one slot);
- the serving application (Ray Serve on that Ray head), following ``models:/<name>@champion``.

The configured ports are used when free, otherwise a free one; the URLs in use are in ``<state>/stack.json``.
Credentials (Airflow user password, JWT secret, Fernet key) are generated on first start into
``<state>/secrets.json`` and the simple auth manager's password file (mode 0600, git-ignored, never logged).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bertops.config import BertopsConfig
from bertops.net import free_port, port_or_free
from bertops.orchestration.airflow_api import (
    USERNAME,
    AirflowApiError,
    AirflowClient,
    passwords_file,
    read_credentials,
)
from bertops.orchestration.ray_head import ONE_MACHINE, node_address
from bertops.orchestration.retrain import DAG_ID, DATA_DAG_ID
from bertops.serving.ingress import HAPROXY_SWITCHES, ray_process_env

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
MLFLOW_PORT = 5000


class StackError(RuntimeError):
    """A service that did not start (the message has its log tail) or a stack in an unexpected state."""


class ServiceExited(StackError):
    """The service's process ended before it answered its health check."""


# ------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class StackPaths:
    root: Path  # the checkout
    state: Path  # <root>/.bertops

    @classmethod
    def of(cls, cfg: BertopsConfig, root: Path) -> StackPaths:
        state = cfg.state_dir if cfg.state_dir.is_absolute() else root / cfg.state_dir
        return cls(root=root.resolve(), state=state.resolve())

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        # Not the embedded default's <state>/mlflow: the server's experiments get mlflow-artifacts: locations,
        # which a client without the server cannot use. One store per mode (docs/operations.md).
        return self.state / "mlflow-server"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def stack_file(self) -> Path:
        return self.state / "stack.json"

    @property
    def ports_file(self) -> Path:
        """Each service's port since its first start: kept across `down` and `up`, so clients keep reaching it."""
        return self.state / "ports.json"

    @property
    def secrets_file(self) -> Path:
        return self.state / "secrets.json"

    @property
    def ray_temp(self) -> Path:
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:8]
        return Path(f"/tmp/bertops_ray_{digest}")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


def ensure_secrets(paths: StackPaths) -> dict[str, str]:
    """Generate the stack's credentials on first start; later starts reuse them. Never logged."""
    data = json.loads(paths.secrets_file.read_text(encoding="utf-8")) if paths.secrets_file.exists() else {}
    fresh = {
        "airflow_password": lambda: secrets.token_urlsafe(18),
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "fernet_key": lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "ray_token": lambda: secrets.token_hex(32),  # Ray's token authentication (RAY_AUTH_TOKEN)
    }
    missing = [k for k in fresh if k not in data]
    if missing:
        data.update({k: fresh[k]() for k in missing})
        _write_private(paths.secrets_file, json.dumps(data, indent=1))
        log.info("generated local stack credentials in %s", paths.secrets_file)
    # Written before Airflow starts, so the simple auth manager finds the user and never prints a password.
    _write_private(
        passwords_file(paths.airflow_home), json.dumps({USERNAME: data["airflow_password"]}) + "\n"
    )
    return data


def airflow_settings(
    home: Path, root: Path, api_port: int, secret: dict[str, str] | None = None, paused: bool = True
) -> dict[str, str]:
    """``AIRFLOW__*`` settings of a bertops Airflow: its own home and SQLite DB, our dags/, LocalExecutor."""
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(paused),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(home)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "BERTOPS_PROJECT_DIR": str(root),
    }
    if api_port:
        env["AIRFLOW__API__PORT"] = str(api_port)
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{api_port}"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{api_port}/execution/"
    if secret:
        env["AIRFLOW__API_AUTH__JWT_SECRET"] = secret["jwt_secret"]
        env["AIRFLOW__CORE__FERNET_KEY"] = secret["fernet_key"]
    return env


def airflow_command(port: int) -> list[str]:
    """What ``airflow standalone`` runs (DB migration, then scheduler, dag-processor and API server in one process
    group), with the scheduler started ``--skip-serve-logs``: its log server (8793) binds every interface and
    Airflow 3 has no setting for its host. With the LocalExecutor the API server reads task logs from the local
    log folder, so nothing needs it. No triggerer: bertops' DAGs defer nothing, and a fourth Airflow process
    starting beside Ray and MLflow costs the 2-core laptop seconds of every ``make up``.

    When any one component ends (a crash, a SIGKILL), the shell ends the whole group (``wait -n; kill 0``): the
    recorded process is then gone and the supervisor starts Airflow again on its port, as it does for a crashed
    MLflow. A half-alive Airflow (an API server taking runs that no scheduler will start) is never left."""
    airflow = shlex.quote(str(VENV_BIN / "airflow"))
    script = (
        f"{airflow} db migrate && {{ {airflow} scheduler --skip-serve-logs & {airflow} dag-processor & "
        f"{airflow} api-server --host 127.0.0.1 --port {port} & wait -n; kill 0; }}"
    )
    return ["/bin/bash", "-c", script]


# ------------------------------------------------------------------------------------------- processes
def http_ok(url: str, timeout: float = 3, accept: tuple[int, ...] = (200,)) -> bool:
    """True when ``url`` answers with a status in ``accept`` (any other outcome: not up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (OSError, ValueError):
        return False


# Ray enables token authentication when ~/.ray/auth_token exists: its dashboard then answers 401 to a request
# without the token, which still means "up" (the Jobs client sends the token).
RAY_UP = (200, 401)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


class PortTaken(StackError):
    """A port the stack's service had is held by another process: a clear error, never a silent move."""


def _listener(port: int) -> Any:
    """The process listening on ``port`` (psutil), or None when none can be seen."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def _is_ours(proc: Any, paths: StackPaths) -> bool:
    import psutil

    try:
        return proc is not None and proc.environ().get(STACK_MARK_ENV) == str(paths.state)
    except psutil.Error:
        return False


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``host:port`` (SO_REUSEADDR, as servers bind: a port in TIME_WAIT after a stop is free)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stack_port(paths: StackPaths, name: str, preferred: int | None = None) -> int:
    """The port of service ``name``: the one it had before (``ports.json``), else ``preferred`` when free, else a
    free one, remembered from then on. A remembered port held by someone else raises :class:`PortTaken`."""
    ports = json.loads(paths.ports_file.read_text(encoding="utf-8")) if paths.ports_file.exists() else {}
    if name in ports:
        port = int(ports[name])
        taken = not port_is_free(port)
        holder = _listener(port) if taken else None  # None: a holder this user cannot see
        # taken by anyone but the stack itself (the stack's Serve proxy may hold the serving port)
        if taken and not _is_ours(holder, paths):
            who = f"pid {holder.pid} ({' '.join(holder.cmdline())[:120]})" if holder else "another process"
            raise PortTaken(
                f"{name}'s port {port} (its address since its first start, in {paths.ports_file}) is taken by "
                f"{who}. Stop that process, or delete the {name!r} entry of {paths.ports_file} to give it a new "
                "port (clients that knew the old address must then be told)"
            )
        return port
    port = port_or_free(preferred) if preferred else free_port()
    ports[name] = port
    paths.ports_file.parent.mkdir(parents=True, exist_ok=True)
    paths.ports_file.write_text(json.dumps(ports, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return port


# Every process the stack starts, and every process those start (Ray's workers, its HAProxy, MLflow's uvicorn
# worker, Airflow's task runners), carries these in its environment: `down` finds what outlived its group by them.
STACK_MARK_ENV = "BERTOPS_STACK_STATE"
SERVICE_MARK_ENV = "BERTOPS_STACK_SERVICE"


def spawn(name: str, cmd: list[str], env: dict[str, str], paths: StackPaths) -> subprocess.Popen:
    """Start ``cmd`` in its own session (process group), output to ``<state>/logs/<name>.log``."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_file = paths.logs / f"{name}.log"
    env = {**env, STACK_MARK_ENV: str(paths.state), SERVICE_MARK_ENV: name}
    with open(log_file, "ab") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=paths.root,
        )  # fmt: skip


def stack_processes(paths: StackPaths, service: str | None = None) -> list[Any]:
    """The running processes this stack (``paths``) started, directly or not (of ``service`` only, when given),
    found by the marks :func:`spawn` puts in their environment; never this process or its ancestors."""
    import psutil

    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in skip:
            continue
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if env.get(STACK_MARK_ENV) == str(paths.state) and service in (None, env.get(SERVICE_MARK_ENV)):
            found.append(proc)
    return found


def stop_processes(procs: list[Any], timeout: float = 15) -> list[str]:
    """SIGTERM ``procs``, SIGKILL what is left after ``timeout``; returns ``"name (pid)"`` of each."""
    import psutil

    names = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.name()} ({proc.pid})")
            proc.terminate()
    _, alive_left = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive_left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive_left, timeout=5)
    return names


def wait_until(
    name: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen | None, paths: StackPaths
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = _log_tail(paths, name)
            raise ServiceExited(
                f"{name} exited (status {proc.returncode}) before it answered; log tail:\n{tail}"
            )
        time.sleep(1)
    raise StackError(f"{name} did not come up within {timeout:.0f}s; log tail:\n{_log_tail(paths, name)}")


def _log_tail(paths: StackPaths, name: str) -> str:
    log_file = paths.logs / f"{name}.log"
    return f"({log_file})\n" + (log_file.read_text(errors="replace")[-3000:] if log_file.exists() else "")


def group_members(pgid: int, paths: StackPaths | None = None) -> list[Any]:
    """The running processes of process group ``pgid``, its leader dead or alive (psutil). With ``paths``, only
    the stack's own: carrying its mark, or working in its checkout (a process that rewrote its command line with
    setproctitle has a blank ``/proc/<pid>/environ``), so a recycled group id never reaches anyone else."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = paths is None or proc.environ().get(STACK_MARK_ENV) == str(paths.state)
            if not ours and not Path(proc.cwd()).is_relative_to(paths.root):  # type: ignore[union-attr]
                continue
            found.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def stop_group(pid: int, timeout: float = 30, paths: StackPaths | None = None) -> bool:
    """SIGTERM every process of the group ``pid`` led (also when the leader itself is gone; with ``paths``, the
    stack's own only: :func:`group_members`), then SIGKILL what is left after ``timeout``. True when anything of
    it was running.

    By group, not by the environment mark alone: Airflow's LocalExecutor workers rewrite their command line
    (setproctitle), which blanks ``/proc/<pid>/environ``, and outlive a killed scheduler as orphans in its group."""
    members = group_members(pid, paths)
    if not members:
        return False
    for _ in range(3):  # again for anything a member started while stopping
        stop_processes(members, timeout)
        members = group_members(pid, paths)
        if not members:
            break
    return True


# ------------------------------------------------------------------------------------------- the stack
def read_state(paths: StackPaths) -> dict[str, Any]:
    if not paths.stack_file.exists():
        return {}
    return dict(json.loads(paths.stack_file.read_text(encoding="utf-8")))


def _save_state(paths: StackPaths, state: dict[str, Any]) -> None:
    paths.state.mkdir(parents=True, exist_ok=True)
    tmp = paths.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(paths.stack_file)


def service_env(state: dict[str, Any], paths: StackPaths) -> dict[str, str]:
    """What every stack process (and a client of the stack) needs to find the others.

    Ray runs with token authentication, the token from ``secrets.json`` (not Ray's per-user
    ``~/.ray/auth_token``, which other Ray instances on the machine may create or share).
    """
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": ensure_secrets(paths)["ray_token"],
        "BERTOPS_PROJECT_DIR": str(paths.root),
        "PYTHONPATH": os.pathsep.join([str(paths.root / "src"), str(paths.root)]),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    services = state.get("services", {})
    if "mlflow" in services:
        env["MLFLOW_TRACKING_URI"] = services["mlflow"]["url"]
        # The same server for the registry: an MLFLOW_REGISTRY_URI left in the caller's environment (MLflow's
        # set_registry_uri writes one) would otherwise send registry calls to another server.
        env["MLFLOW_REGISTRY_URI"] = services["mlflow"]["url"]
    if "ray" in services:
        env["BERTOPS_RAY_DASHBOARD_URL"] = services["ray"]["url"]
        env["RAY_ADDRESS"] = services["ray"]["address"]
        # A loopback head (orchestration.stack_ray_node_ip): a driver without this switch would rewrite
        # 127.0.0.1 in RAY_ADDRESS to the machine's IP, where the GCS does not listen.
        env.update(services["ray"].get("env", {}))
    if "serving" in services:
        env["BERTOPS_SERVING_URL"] = services["serving"]["url"]
    if "airflow" in services:
        env["BERTOPS_AIRFLOW_URL"] = services["airflow"]["url"]
    return env


CLIENT_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI",
              "MLFLOW_REGISTRY_URI", "BERTOPS_RAY_DASHBOARD_URL", "BERTOPS_SERVING_URL", "BERTOPS_AIRFLOW_URL", "AIRFLOW_URL",
              *ONE_MACHINE)  # fmt: skip


def client_env(state: dict[str, Any], paths: StackPaths) -> dict[str, str]:
    """What the stock clients need to reach the running stack (``bertops stack env``): Ray's addresses for
    ``ray.init``/Serve (``RAY_ADDRESS``) and for ``ray job submit`` (``RAY_API_SERVER_ADDRESS``, the dashboard)
    with the token, MLflow's URI, the Airflow and serving URLs."""
    env = service_env(state, paths)
    if "BERTOPS_RAY_DASHBOARD_URL" in env:
        env["RAY_API_SERVER_ADDRESS"] = env["BERTOPS_RAY_DASHBOARD_URL"]
    if "BERTOPS_AIRFLOW_URL" in env:
        env["AIRFLOW_URL"] = env["BERTOPS_AIRFLOW_URL"]
    return {k: env[k] for k in CLIENT_ENV if k in env}


@contextlib.contextmanager
def stack_lock(paths: StackPaths) -> Iterator[None]:
    """One ``up`` or ``down`` at a time per stack (the CLI's, and the supervisor's restarts)."""
    import fcntl

    paths.state.mkdir(parents=True, exist_ok=True)
    with open(paths.state / "stack.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SUPERVISED = ("mlflow", "ray", "airflow")


def up(
    cfg: BertopsConfig,
    root: Path,
    serving: bool = True,
    on_step: Callable[[str], None] | None = None,
    params: Path | None = None,
    supervise: bool = True,
) -> dict[str, Any]:
    """Start whatever of the stack is not running yet; return the state (service URLs and process ids).

    With ``supervise`` (the CLI's ``up``) a supervisor process then watches the services and restarts a crashed
    one on its own port (``bertops.orchestration.supervisor``), as ``docker compose``'s ``restart:
    unless-stopped`` does; ``down`` stops it first. ``params``: the params.yaml the supervisor reloads."""
    paths = StackPaths.of(cfg, root)
    with stack_lock(paths):
        state = _up(cfg, paths, serving, on_step or (lambda msg: log.info("%s", msg)))
        if supervise and not alive(state["services"].get("supervisor", {}).get("pid")):
            cmd = [sys.executable, "-m", "bertops.orchestration.supervisor", "--root", str(paths.root),
                   "--params", str((params or paths.root / "params.yaml").resolve()),
                   *([] if serving else ["--no-serving"])]  # fmt: skip
            base_env = {
                k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")
            }
            proc = spawn("supervisor", cmd, base_env, paths)
            state["services"]["supervisor"] = {"pid": proc.pid, "url": None}
            _save_state(paths, state)
    return state


def _up(cfg: BertopsConfig, paths: StackPaths, serving: bool, note: Callable[[str], None]) -> dict[str, Any]:
    state = read_state(paths)
    recorded = state.get("services", {})
    services: dict[str, Any] = {k: v for k, v in recorded.items() if k == "serving" or alive(v.get("pid"))}
    state["services"] = services
    for name, svc in recorded.items():  # a dead leader's group: what it started (orphans included) goes too
        if name not in services and svc.get("pid") and stop_group(int(svc["pid"]), timeout=5, paths=paths):
            note(f"stopped what was left of the dead {name}'s process group {svc['pid']}")
    secret = ensure_secrets(paths)
    timeout = float(cfg.orchestration.stack_start_timeout_s)
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}

    for name in ("mlflow", "ray", "airflow"):
        if name not in services:  # its leader is gone: what it started must not serve on beside the new one
            orphans = stop_processes(stack_processes(paths, name))
            if orphans:
                note(f"stopped what the dead {name} left running: {', '.join(orphans)}")

    # Every address first: each service's environment names the others' (service_env), so with the ports
    # chosen and recorded, all of them start at once and the slow ones (Airflow's migration, Ray's head) overlap.
    start: dict[str, list[str]] = {}
    if "mlflow" not in services:
        port = stack_port(paths, "mlflow", MLFLOW_PORT)
        paths.mlflow_dir.mkdir(parents=True, exist_ok=True)
        services["mlflow"] = {"pid": None, "url": f"http://127.0.0.1:{port}"}
        start["mlflow"] = [
            str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{paths.mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination", str(paths.mlflow_dir / "artifacts"), "--workers", "1",
        ]  # fmt: skip
    if "ray" not in services:
        # Always a free port: 8265 is Ray's default, which any other Ray on the machine may take at any moment,
        # and a job submitted to someone else's cluster would be a silent disaster. The URL is in stack.json.
        dash = stack_port(paths, "ray_dashboard")
        gcs = stack_port(paths, "ray_gcs")
        node_args, node_env = node_address(cfg.orchestration.stack_ray_node_ip)
        services["ray"] = {"pid": None, "url": f"http://127.0.0.1:{dash}", "address": f"127.0.0.1:{gcs}",
                           "env": node_env}  # fmt: skip
        start["ray"] = [
            sys.executable, "-m", "bertops.orchestration.ray_head", "start", "--head", "--block",
            "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--num-cpus", str(cfg.orchestration.stack_ray_cpus), "--temp-dir", str(paths.ray_temp),
            "--object-store-memory", str(cfg.orchestration.stack_ray_object_store_mb * 1024**2),
            "--disable-usage-stats", *node_args,
        ]  # fmt: skip
    deploy = serving and not (services.get("serving") and http_ok(f"{services['serving']['url']}/healthz"))
    if deploy:
        serving_port = stack_port(paths, "serving", cfg.serving.port)
        url = f"http://127.0.0.1:{serving_port}{cfg.serving.route_prefix.rstrip('/')}"
        services["serving"] = {"pid": None, "url": url}
    if "airflow" not in services:
        airflow_port = stack_port(paths, "airflow", urlparse(cfg.orchestration.airflow_url).port or 8080)
        services["airflow"] = {"pid": None, "url": f"http://127.0.0.1:{airflow_port}"}
        start["airflow"] = airflow_command(airflow_port)
    _save_state(paths, state)
    common = {**base_env, **service_env(state, paths)}

    procs: dict[str, subprocess.Popen] = {}
    if "mlflow" in start:
        note(f"starting MLflow on {services['mlflow']['url'].removeprefix('http://')}")
        # MLflow 3's job executor (huey consumers for GenAI jobs) is not used by bertops: 7 processes saved.
        procs["mlflow"] = spawn("mlflow", start["mlflow"], {**common, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                paths)  # fmt: skip
        services["mlflow"]["pid"] = procs["mlflow"].pid
    ready = paths.state / "ray.ready"
    if "ray" in start:
        ray_env = {
            **common,
            # Ray gives its dashboard 60 s to start by default; a busy 2-core machine can need several minutes.
            # (and its raylet waits 16 s for the dashboard agent to report its port, then aborts).
            "RAY_DASHBOARD_STARTUP_TIMEOUT_S": str(int(timeout)),
            "RAY_agent_register_timeout_ms": str(int(timeout * 1000)),
            "RAY_raylet_start_wait_time_s": str(int(timeout)),
            "BERTOPS_RAY_START_TIMEOUT_S": str(int(timeout)),
            "BERTOPS_RAY_READY_FILE": str(ready),
            **ray_process_env(cfg.serving),  # serving.ingress: Serve's processes read it at start
            # Ray's dashboard and autoscaler Prometheus servers default to fixed ports (44227, 44217), which
            # any other Ray on the machine may hold already (theirs then fail to start): free ones instead.
            "DASHBOARD_METRIC_PORT": str(free_port()),
            "AUTOSCALER_METRIC_PORT": str(free_port()),
        }

        def start_ray() -> None:  # also again, on the same ports, when the head exits during start-up
            ready.unlink(missing_ok=True)
            procs["ray"] = spawn("ray", start["ray"], ray_env, paths)
            services["ray"]["pid"] = procs["ray"].pid

        note(f"starting a Ray head (dashboard {services['ray']['url'].removeprefix('http://')})")
        start_ray()
    if "airflow" in start:
        note(f"starting Airflow on {services['airflow']['url'].removeprefix('http://')}")
        env = {
            **common,
            **airflow_settings(
                paths.airflow_home, paths.root, airflow_port, secret, cfg.orchestration.dags_paused
            ),
        }
        procs["airflow"] = spawn("airflow", start["airflow"], env, paths)
        services["airflow"]["pid"] = procs["airflow"].pid
    _save_state(paths, state)

    if "mlflow" in procs:
        url = services["mlflow"]["url"]
        wait_until("mlflow", lambda: http_ok(f"{url}/health"), timeout, procs["mlflow"], paths)
    if "ray" in procs:
        url = services["ray"]["url"]
        # Ray waits only 30 s (hard-coded) for its raylet to register: on an overloaded machine the head can
        # exit during start-up. Try again, on the same ports, a few times, before giving up.
        for attempt in range(1, 6):
            try:
                wait_until(
                    "ray",
                    lambda: ready.exists() and http_ok(f"{url}/api/version", accept=RAY_UP),
                    timeout,
                    procs["ray"],
                    paths,
                )
                break
            except ServiceExited:
                # What the failed attempt left (its GCS and dashboard hold the ports) goes before the next one;
                # the group outlives its leader, which has exited.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(procs["ray"].pid, signal.SIGKILL)
                time.sleep(2)
                if attempt == 5:
                    raise
                note(f"the Ray head exited during start-up; starting it again (attempt {attempt + 1})")
                start_ray()
                _save_state(paths, state)

    if deploy:
        note(f"deploying the serving application on Ray (127.0.0.1:{serving_port})")
        cmd = [str(VENV_BIN / "bertops"), "serve", "--detach", "--host", "127.0.0.1", "--port", str(serving_port),
               "--address", services["ray"]["address"]]  # fmt: skip
        # The Ray head above was started with the ingress switches (serving.ingress); the deploying driver has
        # them too, so that it knows they are in effect.
        switches = HAPROXY_SWITCHES if cfg.serving.ingress == "haproxy" else {}
        with open(paths.logs / "serving.log", "ab") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**common, **switches},
                                cwd=paths.root, timeout=timeout, check=False).returncode  # fmt: skip
        if rc != 0:
            raise StackError(f"`bertops serve` failed (exit {rc}); see {paths.logs / 'serving.log'}")

    if "airflow" in procs:
        url = services["airflow"]["url"]
        wait_until(
            "airflow", lambda: http_ok(f"{url}/api/v2/monitor/health"), timeout, procs["airflow"], paths
        )
        _ensure_pool(cfg, paths, url)
    _apply_paused(cfg, paths, services["airflow"]["url"], note)
    _save_state(paths, state)
    return state


def _apply_paused(cfg: BertopsConfig, paths: StackPaths, url: str, note: Callable[[str], None]) -> None:
    """Put the DAGs Airflow already knows in the state ``orchestration.dags_paused`` says (new ones are created
    in it: ``dags_are_paused_at_creation``), so that a stack started with other settings follows the config."""
    client = AirflowClient(url, *read_credentials(paths.airflow_home))
    want = cfg.orchestration.dags_paused
    for dag_id in (DATA_DAG_ID, DAG_ID):
        try:
            paused = client.get_dag(dag_id)["is_paused"]
        except AirflowApiError as exc:
            if exc.status_code == 404:  # not parsed yet: it is created as dags_paused says
                continue
            raise
        if paused != want:
            client.set_paused(dag_id, want)
            note(
                f"{dag_id}: {'paused' if want else 'unpaused'} (orchestration.dags_paused: {str(want).lower()})"
            )


def airflow_client(cfg: BertopsConfig, root: Path, url: str | None = None) -> Any:
    """An :class:`AirflowClient`: ``url``, else ``BERTOPS_AIRFLOW_URL``, else the running stack's, else
    ``orchestration.airflow_url``; credentials from the environment or the stack's generated ones."""
    paths = StackPaths.of(cfg, root)
    services = read_state(paths).get("services", {})
    url = (
        url
        or os.environ.get("BERTOPS_AIRFLOW_URL")
        or services.get("airflow", {}).get("url")
        or cfg.orchestration.airflow_url
    )
    return AirflowClient(url, *read_credentials(paths.airflow_home))


def _ensure_pool(cfg: BertopsConfig, paths: StackPaths, url: str) -> None:
    client = AirflowClient(url, *read_credentials(paths.airflow_home))
    name = cfg.orchestration.dvc_pool
    try:
        client.request("GET", f"/pools/{name}")
    except AirflowApiError as exc:
        if exc.status_code != 404:
            raise
        client.request("POST", "/pools", {"name": name, "slots": 1, "description": "DVC work, one at a time"})


def down(cfg: BertopsConfig, root: Path, on_step: Callable[[str], None] | None = None) -> list[str]:
    """Stop every process ``up`` started (the supervisor first, so that it restarts nothing); return the names."""
    note = on_step or (lambda msg: log.info("%s", msg))
    paths = StackPaths.of(cfg, root)
    supervisor = read_state(paths).get("services", {}).get("supervisor", {}).get("pid")
    stopped = []
    if supervisor and alive(supervisor):  # outside the lock: it may hold it while restarting a service
        note(f"stopping the supervisor (process group {supervisor})")
        stop_group(int(supervisor), timeout=30, paths=paths)
        stopped.append("supervisor")
    with stack_lock(paths):
        return stopped + _down(paths, note)


def _down(paths: StackPaths, note: Callable[[str], None]) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    state = read_state(paths)
    groups = []
    for name in ("airflow", "ray", "mlflow"):
        pid = state.get("services", {}).get(name, {}).get("pid")
        if pid and group_members(int(pid), paths):  # its leader may be dead with its group still running
            note(f"stopping {name} (process group {pid})")
            groups.append((name, int(pid)))
    # All at once: each group's graceful shutdown is mostly waiting. Ray's took 36 s on SIGTERM (its Serve
    # replicas and workers wind down one by one) and the local head keeps nothing that a SIGKILL could lose (no
    # GCS persistence; a crashed head is restarted the same way): 15 s, then SIGKILL.
    with ThreadPoolExecutor(max_workers=max(len(groups), 1)) as pool:
        list(pool.map(lambda g: stop_group(g[1], timeout=15 if g[0] == "ray" else 30, paths=paths), groups))
    stopped = [name for name, _ in groups]
    # What outlived its group: Ray's HAProxy (its own session), idle Ray workers, an orphaned uvicorn worker.
    leftovers = stop_processes(stack_processes(paths))
    if leftovers:
        note(f"stopped what the stack's processes had left running: {', '.join(leftovers)}")
        stopped.append("leftovers")
    if paths.stack_file.exists():
        paths.stack_file.unlink()
    return stopped


def status(cfg: BertopsConfig, root: Path) -> dict[str, dict[str, Any]]:
    """Each service's URL, whether its process runs and whether it answers its health check."""
    paths = StackPaths.of(cfg, root)
    services = read_state(paths).get("services", {})
    health = {
        "mlflow": "/health",
        "ray": "/api/version",
        "airflow": "/api/v2/monitor/health",
        "serving": "/healthz",
    }
    out: dict[str, dict[str, Any]] = {}
    for name in ("airflow", "ray", "mlflow", "serving"):
        svc = services.get(name)
        if not svc:
            out[name] = {"url": None, "running": False, "healthy": False}
            continue
        running = alive(svc.get("pid")) if svc.get("pid") else None
        accept = RAY_UP if name == "ray" else (200,)
        healthy = http_ok(svc["url"] + health[name], accept=accept)
        out[name] = {"url": svc["url"], "running": running, "healthy": healthy}
    supervisor = alive(services.get("supervisor", {}).get("pid"))
    out["supervisor"] = {"url": None, "running": supervisor, "healthy": supervisor}
    return out
