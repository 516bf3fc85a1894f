"""The command blocks of README.md and docs/ marked ``runnable`` (```` ```bash runnable ````, ```` ```python
runnable ````) run as written against a live local stack (``bertops stack up`` in a small copy of the checkout),
in page order, so that a page cannot drift from the code. Afterwards ``git status`` of the copy is empty.

The copy has tiny data and a fine-tune of a few steps from scratch (its params.yaml), so that the training
commands the pages show finish in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from tests.conftest import FOLDER_OVERRIDES, write_topic_folders
from tests.orchestration.conftest import git, make_project

pytestmark = pytest.mark.slow
MODULE_STARTED = time.time()  # before the stack exists: a DAG run for a tick before this was nobody's ask

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/operations.md", "docs/training.md", "docs/model.md", "docs/serving.md"]
BLOCK = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.S | re.M)
SMALL = {
    "ingest": {
        "corpus": {"max_records": 30},
        "classification": {"max_records": 300},
        "ner": {"max_records": 60},
    },
    "vocab": {"vocab_size": 300, "min_frequency": 1},
    "pretrain_data": {"dupe_factor": 1, "max_seq_length": 64, "num_workers": 1},
    "finetune_data": {"max_seq_length": 64},
    "finetune": {"init": "scratch", "max_steps": 3, "batch_size": 8, "log_every_steps": 1},
    "evaluation": {"latency_repeats": 2},
    "orchestration": {"stack_start_timeout_s": 600},
}


def runnable_blocks() -> list[tuple[str, str, str]]:
    """``(page, language, code)`` of every runnable block, in page order."""
    out = []
    for page in PAGES:
        text = (REPO_ROOT / page).read_text(encoding="utf-8")
        out += [(page, lang, code) for lang, code in BLOCK.findall(text)]
    return out


def test_the_pages_mark_blocks_runnable() -> None:
    pages = {page for page, _, _ in runnable_blocks()}
    assert {"docs/operations.md", "docs/training.md", "docs/model.md", "docs/serving.md"} <= pages


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path_factory.mktemp("doc_stack"), SMALL)
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])  # the docs call .venv/bin/python
    with open(root / ".git" / "info" / "exclude", "a") as fh:  # `.venv/` in .gitignore matches no symlink
        fh.write("/.venv\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200"}  # fmt: skip
    # The session's test settings are not the stack's. MLFLOW_EXPERIMENT_ID is set in this process by any
    # earlier in-process test's mlflow.set_experiment (an experiment of another server): a new shell has none.
    # MLflow's set_tracking_uri / set_registry_uri write MLFLOW_* variables too: a new shell has none of them.
    for name in [k for k in env if k.startswith("MLFLOW_")] + [
        "RAY_ADDRESS",
        "RAY_AUTH_MODE",
        "BERTOPS_AIRFLOW_URL",
    ]:
        env.pop(name, None)
    subprocess.run(
        ["bertops", "data", "repro"], cwd=root, env=env, check=True, capture_output=True, timeout=900
    )
    git(root, "add", "dvc.lock", "data/reports/data_report.json")
    git(root, "commit", "-qm", "data")
    up = subprocess.run(["bertops", "stack", "up"], cwd=root, env=env, capture_output=True, text=True,
                        timeout=1800)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield root, env
    finally:
        state = json.loads((root / ".bertops" / "stack.json").read_text()) if up.returncode == 0 else {}
        down = subprocess.run(["bertops", "stack", "down"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    _nothing_left_after_down(root, state, down.stdout + down.stderr)


def _nothing_left_after_down(root: Path, state: dict, output: str) -> None:
    """``bertops stack down`` leaves no process the stack started (Ray's HAProxy and idle workers included) and
    nothing listening on any address the stack had."""
    import socket

    from bertops.config import load_config
    from bertops.orchestration.stack import StackPaths, stack_processes

    left = stack_processes(StackPaths.of(load_config(root / "params.yaml"), root))
    assert not left, (
        f"still running after `bertops stack down`: {[(p.pid, p.cmdline()) for p in left]}",
        output,
    )
    # also what carries no mark any more (setproctitle blanks /proc/<pid>/environ): nothing works in the checkout
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    in_checkout = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid not in me and Path(proc.cwd()).is_relative_to(root):
                in_checkout.append((proc.pid, proc.info["cmdline"]))
        except (psutil.Error, OSError):
            continue
    assert not in_checkout, (f"still running in {root} after `bertops stack down`: {in_checkout}", output)
    for name, svc in state.get("services", {}).items():
        for key in ("url", "address"):
            if not svc.get(key):
                continue
            host, _, port = svc[key].split("://")[-1].split("/")[0].rpartition(":")
            with socket.socket() as sock:
                sock.settimeout(2)
                listening = sock.connect_ex((host, int(port))) == 0
            assert not listening, (
                f"{name} still listens on {host}:{port} after `bertops stack down`: {output}"
            )


def test_runnable_doc_blocks_work_against_a_live_stack(stack: tuple[Path, dict[str, str]]) -> None:
    root, env = stack
    failures = []
    for page, lang, code in runnable_blocks():
        if lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:  # the stack's settings, as the page says to get them
            cmd = [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                f"eval \"$(bertops stack env)\"\npython - <<'PY'\n{code}PY\n",
            ]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            failures.append(f"--- {page} ({lang}), exit {proc.returncode}:\n{code}\n{proc.stdout[-2000:]}\n"
                            f"{proc.stderr[-3000:]}")  # fmt: skip
    assert not failures, "\n".join(failures)
    assert git(root, "status", "--porcelain") == ""


def test_stack_up_leaves_the_dags_unpaused_by_default(stack: tuple[Path, dict[str, str]]) -> None:
    from bertops.config import load_config
    from bertops.orchestration.airflow_api import AirflowApiError
    from bertops.orchestration.stack import airflow_client

    root, _ = stack
    client = airflow_client(load_config(root / "params.yaml"), root)
    deadline = time.monotonic() + 300
    while True:  # the dag-processor parses dags/ after start-up
        try:
            dag = client.get_dag("bert_retrain")
            break
        except AirflowApiError as exc:
            if exc.status_code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(5)
    assert dag["is_paused"] is False  # orchestration.dags_paused: false


def test_a_failed_retrain_says_why_where_the_user_looks(stack: tuple[Path, dict[str, str]]) -> None:
    """``bertops retrain --wait`` on data that ``validate`` refuses: the failing task, its try (one: a data error
    is not retried), the stage's own message and the path of the full log, printed by the command itself."""
    root, env = stack
    sets = "--set validate.min_class_fraction=0.49 --set finetune.max_steps=3"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", 'eval "$(bertops stack env)"\n'
                           f"bertops retrain --pretraining skip {sets} --wait --timeout 1200"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1500)  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out[-4000:]
    assert "prepare_data failed (try 1 of 3, not retried: the same input fails again)" in out, out[-4000:]
    assert "stage validate refused its input" in out and "min_class_fraction" in out, out[-4000:]
    log = Path(re.search(r"full log: (\S+)", out).group(1))
    assert log.is_file() and "min_class_fraction" in log.read_text(errors="replace"), log
    # the failure callback said it in the task's own log; the summary ran after the failure and says it too
    line = "prepare_data failed (try 1 of 3, not retried: the same input fails again)"
    assert f"bertops: {line}" in log.read_text(errors="replace"), log
    run_id = re.search(r"triggered bert_retrain run (\S+)", out).group(1)
    summary_log = log.parents[1] / "task_id=summary" / "attempt=1.log"
    assert f"the retrain failed: {line}" in summary_log.read_text(errors="replace"), summary_log
    # bertops stack status names the last run, its state and the same failure
    status = subprocess.run(["bertops", "stack", "status"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    said = " ".join((status.stdout + status.stderr).split())
    assert f"last bert_retrain run: {run_id} failed" in said and line in said, said
    assert "min_class_fraction" in said and f"full log: {log}" in said, said
    assert git(root, "status", "--porcelain") == ""


def test_bertops_serve_refuses_the_port_the_stack_serves_on(stack: tuple[Path, dict[str, str]]) -> None:
    root, env = stack
    url = subprocess.run(["bash", "-c", 'eval "$(bertops stack env)"; echo "$BERTOPS_SERVING_URL"'], cwd=root,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    port = url.rsplit(":", 1)[1].split("/")[0]
    proc = subprocess.run(["bertops", "serve", "--port", port], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "already in use" in proc.stderr, proc.stdout + proc.stderr
    # With the stack's settings and another port: refused too, instead of taking over the stack's application
    # (Serve keeps one HTTP address per cluster: the new port would be ignored and the stack's models replaced).
    import httpx

    from bertops.net import free_port

    before = httpx.get(f"{url}/readyz", timeout=30).json()
    other = free_port()
    proc = subprocess.run(["bash", "-c", f'eval "$(bertops stack env)"; bertops serve --port {other} --detach'],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "already serves application 'bertops'" in out, out[-3000:]
    assert httpx.get(f"{url}/readyz", timeout=30).json() == before


def test_finetune_shows_progress_and_keeps_the_noise_in_a_log(stack: tuple[Path, dict[str, str]]) -> None:
    """``bertops finetune`` on the stack's Ray: the live line relayed from the rank-0 worker, a log file for
    TensorFlow's and Ray's output."""
    root, env = stack
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", 'eval "$(bertops stack env)"\n'
                           "bertops finetune --set finetune.output_dir=artifacts/ft-progress"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, terminal[-4000:]
    assert "logs: " in terminal and "step 3/3" in terminal and "finished" in terminal, terminal[-4000:]
    for noise in (
        "oneDNN",
        "absl",
        "Failed to query Ray Train Controller",
        "MirroredStrategy",
        "(RayTrainWorker",
    ):
        assert noise not in terminal, terminal[-4000:]
    log_file = next((root / ".bertops" / "logs").glob("finetune-*.log"))
    kept = log_file.read_text(errors="replace")
    # the worker's forwarded output: TensorFlow's (its strategy) and Ray Train's lines
    assert "(RayTrainWorker" in kept and "MirroredStrategy" in kept and "(TrainController" in kept, kept[
        -3000:
    ]


def test_two_retrains_queued_back_to_back_each_train_on_their_own_data(
    stack: tuple[Path, dict[str, str]],
) -> None:
    """Two ``bertops retrain`` runs with different data overrides, triggered one right after the other through
    the stack's Airflow API server and run by its scheduler (one at a time), each on its own data:

    1. ``ingest.classification.max_records=100``: evaluated on about 10% of 100 records;
    2. docs/own_data.md section 6: a folder-per-label data set (3 labels, labels from the data) under its own
       ``registry.model_name``; its champion's logged model has the 3 labels, and the stack's service, which
       serves another model, is left as it was, with the summary saying so.

    Each has its own data version and DVC experiment; the checkout is clean afterwards."""
    from bertops.config import load_config
    from bertops.orchestration.stack import airflow_client

    root, env = stack
    labels = write_topic_folders(root / "data" / "raw" / "topics")
    git(root, "add", "data/raw/topics")
    git(root, "commit", "-qm", "my topics")
    name = "news-topics"
    runs = {
        "small": ["ingest.classification.max_records=100"],
        "folder": [*FOLDER_OVERRIDES, f"registry.model_name={name}", "promotion.min_absolute=0",
                   "promotion.min_over_majority=0"],
    }  # fmt: skip
    run_ids = {}
    for key, sets in runs.items():
        args = " ".join(f"--set '{s}'" for s in [*sets, "finetune.max_steps=3"])
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", 'eval "$(bertops stack env)"\n'
                               f"bertops retrain --pretraining skip {args}"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        run_ids[key] = re.search(r"triggered bert_retrain run (\S+)", proc.stdout).group(1)
    client = airflow_client(load_config(root / "params.yaml"), root)
    summaries = {}
    for key, run_id in run_ids.items():
        final = client.wait_run("bert_retrain", run_id, 1500)
        assert final["state"] == "success", (run_id, final)
        summaries[key] = client.xcom("bert_retrain", run_id, "summary")
    small, folder = summaries["small"], summaries["folder"]
    assert 5 <= small["metrics"]["num_examples"] <= 16, small["metrics"]
    assert "ingest.classification.max_records=100" in small["overrides"]
    assert "validate.labels=null" in folder["overrides"]
    assert small["data_version"] != folder["data_version"]
    assert small["dvc_experiment"] != folder["dvc_experiment"]
    assert folder["model"] == name and folder["decision"].startswith("promoted"), folder
    assert name in folder["serving_note"] and "serving.models" in folder["serving_note"], folder

    script = ("import json, mlflow\n"
              f"v = mlflow.MlflowClient().get_model_version_by_alias({name!r}, 'champion')\n"
              f"info = mlflow.models.get_model_info('models:/{name}@champion')\n"
              "print(json.dumps({'version': v.version, 'labels': info.metadata['labels']}))\n")  # fmt: skip
    shown = subprocess.run(["bash", "-euo", "pipefail", "-c", f'eval "$(bertops stack env)"\npython -c "{script}"'],
                           cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    champion = json.loads(shown.stdout.strip().splitlines()[-1])
    assert champion == {"version": folder["version"], "labels": labels}, champion
    assert git(root, "status", "--porcelain") == ""


# ---------------------------------------------------------------- listeners of the stack (serving/stack_listeners)
@pytest.fixture(scope="module")
def beyond_loopback(stack: tuple[Path, dict[str, str]]) -> dict[str, list]:
    from tests.serving.stack_listeners import beyond_loopback as probe

    return probe(stack[0])


def test_every_listener_is_loopback_or_refuses_unauthenticated_requests(
    stack: tuple[Path, dict[str, str]], beyond_loopback: dict
) -> None:
    """HAProxy (frontend, stats, metrics), the replicas, MLflow, Airflow (no log servers), the dashboard, Ray's
    Prometheus servers: on loopback. Any Ray port beyond it refuses an unauthenticated call (each one probed),
    and so does Ray's GCS wherever it listens: token authentication is on."""
    from tests.serving.stack_listeners import refuses_without_token

    sockets = beyond_loopback["all"]
    assert not [s for s in sockets if s[1] in (8793, 8794)], "Airflow's log servers are running"
    gcs = json.loads((stack[0] / ".bertops" / "stack.json").read_text())["services"]["ray"]["address"]
    host, port = gcs.rsplit(":", 1)
    assert refuses_without_token(host, int(port)), f"Ray's GCS at {gcs} answered a call without the token"
    bad = beyond_loopback["bad"]
    assert not bad, "listeners beyond loopback that are not Ray token-authenticated:\n" + "\n".join(
        map(str, bad)
    )


def test_rays_prometheus_servers_are_on_loopback(beyond_loopback: dict) -> None:
    """The dashboard's, autoscaler's and agent's Prometheus servers follow the node address, which the stack
    keeps on loopback (orchestration.stack_ray_node_ip, bertops.orchestration.ray_head.node_address)."""
    assert not beyond_loopback["ray_metrics"], beyond_loopback["ray_metrics"]
    # Still there, on loopback: the dashboard's, the autoscaler's and the agent's.
    commands = [command for _, _, command in beyond_loopback["loopback_ray_metrics"]]
    for process in ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "DashboardAgent"):
        assert any(process in command for command in commands), (process, commands)


def test_a_driver_with_the_stacks_settings_runs_a_task(stack: tuple[Path, dict[str, str]]) -> None:
    """The stack's Ray still takes drivers: ``bertops stack env`` and ``ray.init()``."""
    root, env = stack
    code = "import ray; ray.init(); print('ANSWER', ray.get(ray.remote(lambda: 6 * 7).remote()))"
    out = subprocess.run(["bash", "-c", f'eval "$(bertops stack env)"; python -c "{code}"'], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "ANSWER 42" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


class _RequestStream:
    """POSTs /predict to the stack's service back to back on a thread, counting each answer's status."""

    def __init__(self, url: str) -> None:
        import threading
        from collections import Counter

        self.url, self.statuses = url, Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                try:
                    status = http.post(
                        f"{self.url}/predict", json={"texts": ["a fine, moving film"]}
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.statuses[status] += 1
                time.sleep(0.05)

    def __enter__(self) -> _RequestStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _services(root: Path) -> dict:
    return json.loads((root / ".bertops" / "stack.json").read_text())["services"]


@dataclass
class _Fault:
    back_s: float  # from the kill to the first check that held
    services: dict  # stack.json's services then
    before: Counter  # the service's answers in the 3 s before the kill
    during: Counter  # ... from the kill until it was back


def _inject(root: Path, what: str, kill: Callable[[], None], is_back: Callable[[dict], bool],
            timeout_s: float = 300) -> _Fault:  # fmt: skip
    """The fault-injection walk every fault test shares: requests stream to the stack's service for 3 s, then
    ``kill()`` and, with the stream still running, ``is_back(services)`` once a second until it holds; fails with
    the supervisor's log when it never does."""
    serving = _services(root)["serving"]["url"]
    with _RequestStream(serving) as before:
        time.sleep(3)
    with _RequestStream(serving) as during:
        kill()
        killed, back = time.monotonic(), None
        while back is None and time.monotonic() - killed < timeout_s:
            services = _services(root)
            if is_back(services):
                back = time.monotonic() - killed
            else:
                time.sleep(1)
    log = (root / ".bertops" / "logs" / "supervisor.log").read_text(errors="replace")
    assert back is not None, f"{what} did not come back within {timeout_s} s; supervisor log:\n{log[-3000:]}"
    return _Fault(back, services, before.statuses, during.statuses)


def _answers(url: str, path: str, status: int, **kwargs) -> bool:
    import httpx

    try:
        return httpx.request("POST" if "json" in kwargs else "GET", f"{url}{path}", timeout=10,
                             **kwargs).status_code == status  # fmt: skip
    except httpx.HTTPError:
        return False


def test_a_killed_mlflow_during_a_retrain_comes_back_and_the_retrain_completes(
    stack: tuple[Path, dict[str, str]],
) -> None:
    """SIGKILL of MLflow's whole process group while a retrain's ``finetune`` runs and requests stream to the
    service: the stack's supervisor starts MLflow again on the same port, so every client that knew the address
    (the Ray head's MLFLOW_TRACKING_URI, the job, the DAG's tasks, the replicas) reaches it again; the retrain
    completes and registers its version; the service answers as before."""
    import signal

    import httpx

    from bertops.config import load_config
    from bertops.orchestration.stack import airflow_client

    root, _ = stack
    before = _services(root)
    url, pid, serving = before["mlflow"]["url"], before["mlflow"]["pid"], before["serving"]["url"]
    assert before["supervisor"]["pid"], before
    client = airflow_client(load_config(root / "params.yaml"), root)
    # a gate any candidate passes: the service gets its first bert-sentiment champion, so that the faults after
    # this one are measured on a service that answers 200
    overrides = ["finetune.max_steps=3", "promotion.min_absolute=0", "promotion.min_over_majority=0"]
    run = client.trigger_dag("bert_retrain", {"pretraining": "skip", "overrides": overrides})
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # until the fine-tune's Ray job runs (it logs to MLflow)
        states = {t["task_id"]: t["state"] for t in client.task_instances("bert_retrain", run_id)}
        if states.get("finetune") == "running" or states.get("finetune") in ("success", "failed"):
            break
        time.sleep(2)
    assert states.get("finetune") == "running", states
    # while the retrain trains: every listener of the stack (Ray's, the job's workers' included) is on loopback
    # or refuses a request without Ray's token
    from tests.serving.stack_listeners import beyond_loopback

    during_retrain = beyond_loopback(root)
    assert not during_retrain["bad"], during_retrain["bad"]
    fault = _inject(
        root,
        "MLflow",
        lambda: os.killpg(pid, signal.SIGKILL),
        lambda services: (
            services.get("mlflow", {}).get("pid") not in (None, pid) and _answers(url, "/health", 200)
        ),
    )
    assert fault.services["mlflow"]["url"] == url  # the same address
    final = client.wait_run("bert_retrain", run_id, 1500)
    tries = {t["task_id"]: t["try_number"] for t in client.task_instances("bert_retrain", run_id)}
    assert final["state"] == "success", (final, client.failures("bert_retrain", run_id))
    summary = client.xcom("bert_retrain", run_id, "summary")
    assert summary["version"] and summary["decision"].startswith("promoted"), summary
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the service follows its new champion (update_serving, or its poll)
        if httpx.post(f"{serving}/predict", json={"texts": ["fine"]}, timeout=30).status_code == 200:
            break
        time.sleep(2)
    else:
        raise AssertionError(httpx.get(f"{serving}/metadata", timeout=10).text)
    # the same answers as before (or 200: the retrain may have promoted the service's first champion)
    assert set(fault.during) <= {*fault.before, 200}, (fault.before, fault.during)
    # the supervisor's `up` goes on checking the other services, then says so
    deadline, log = time.monotonic() + 300, ""
    while "mlflow running again after" not in log and time.monotonic() < deadline:
        time.sleep(2)
        log = (root / ".bertops" / "logs" / "supervisor.log").read_text(errors="replace")
    assert "mlflow not running: starting it again" in log and "mlflow running again after" in log, log[-3000:]
    print(f"FAULT mlflow (group, during finetune): back at {url} after {fault.back_s:.1f} s; retrain "
          f"{final['state']}, tries {tries}; requests during: {dict(fault.during)}")  # fmt: skip


@pytest.mark.parametrize("component", ["scheduler", "api-server"])
def test_a_killed_airflow_component_brings_airflow_back_on_its_address(
    stack: tuple[Path, dict[str, str]], component: str
) -> None:
    """SIGKILL of one Airflow process (the scheduler, the API server) while requests stream to the service: the
    rest of Airflow's group stops with it and the supervisor starts Airflow again on its port, with a healthy
    scheduler; the service answers every request as it did before the fault."""
    import signal

    import httpx

    root, _ = stack
    services = _services(root)
    url, group = services["airflow"]["url"], services["airflow"]["pid"]
    victim = _wait_for_component(group, component)
    killed_at = datetime.now().astimezone()

    def is_back(services: dict) -> bool:  # a new group with its own API server and scheduler, which beats
        now = services["airflow"]["pid"]
        try:
            health = httpx.get(f"{url}/api/v2/monitor/health", timeout=5).json()["scheduler"]
            beat = datetime.fromisoformat(health["latest_scheduler_heartbeat"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return (now != group and health.get("status") == "healthy" and beat > killed_at
                and bool(_component(now, "api-server")) and bool(_component(now, "scheduler")))  # fmt: skip

    fault = _inject(
        root, f"Airflow ({component} killed)", lambda: victim.send_signal(signal.SIGKILL), is_back
    )
    # nothing of the old group is left: its LocalExecutor workers outlive a killed scheduler as orphans in it
    from bertops.orchestration.stack import group_members

    assert not group_members(group), [(p.pid, p.cmdline()) for p in group_members(group)]
    assert set(fault.during) == set(fault.before), (fault.before, fault.during)
    print(f"FAULT airflow {component}: back at {url} after {fault.back_s:.1f} s; requests during: "
          f"{dict(fault.during)}")  # fmt: skip


def _component(group: int, name: str):
    """The Airflow component ``name`` of the Airflow group ``group``: the shell's child running ``airflow <name>``
    (the scheduler's executor workers carry the same command line one level down)."""
    import psutil

    title = {"api-server": "airflow api_server"}.get(name, f"airflow {name}")  # its setproctitle
    found = [p for p in psutil.process_iter(["cmdline", "ppid"]) if p.info["ppid"] == group
             and title in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    return found[0] if len(found) == 1 else None


def _wait_for_component(group: int, name: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while (proc := _component(group, name)) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert proc is not None, f"no `airflow {name}` in Airflow's group {group} after {timeout_s} s"
    return proc


def _job_driver(root: Path, script: str):
    """The running Ray job driver of ``ray_jobs/<script>`` for the checkout ``root``, or None."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if any(part.endswith(f"ray_jobs/{script}") for part in proc.info["cmdline"] or []) and str(
                proc.info["cwd"] or ""
            ).startswith(str(root)):
                return proc
    return None


def test_a_killed_ray_head_during_a_retrain_comes_back_with_the_service(
    stack: tuple[Path, dict[str, str]],
) -> None:
    """SIGKILL of the Ray head's whole process group (GCS, raylet, Serve, the replicas, and the retrain's running
    fine-tune job; Ray's HAProxy lives in a session of its own) under a stream of requests, while a retrain's
    ``finetune`` job trains: the supervisor clears what is left, starts Ray again on its ports and redeploys the
    service, which answers again as before; ``finetune``'s try fails on the lost connection (an infrastructure
    error: retried, its line says so) and the next try submits the job again to the new head, so the retrain
    completes."""
    import signal

    from bertops.config import load_config
    from bertops.orchestration.stack import airflow_client

    root, _ = stack
    before = _services(root)
    pid, serving = before["ray"]["pid"], before["serving"]["url"]
    usual = 200 if _answers(serving, "/predict", 200, json={"texts": ["fine"]}) else 503
    client = airflow_client(load_config(root / "params.yaml"), root)
    run_id = client.trigger_dag(
        "bert_retrain", {"pretraining": "skip", "overrides": ["finetune.max_steps=3"]}
    )["dag_run_id"]
    deadline = time.monotonic() + 600
    while _job_driver(root, "finetune.py") is None and time.monotonic() < deadline:
        time.sleep(1)
    assert _job_driver(root, "finetune.py") is not None, client.task_instances("bert_retrain", run_id)
    fault = _inject(
        root,
        "the service (Ray head killed)",
        lambda: os.killpg(pid, signal.SIGKILL),
        lambda services: (
            services.get("ray", {}).get("pid") not in (None, pid)
            and _answers(serving, "/predict", usual, json={"texts": ["fine"]})
        ),
        timeout_s=600,
    )
    assert fault.services["serving"]["url"] == serving
    final = client.wait_run("bert_retrain", run_id, 1500)
    tries = {t["task_id"]: t["try_number"] for t in client.task_instances("bert_retrain", run_id)}
    assert final["state"] == "success", (final, client.failures("bert_retrain", run_id))
    assert tries["finetune"] >= 2, tries  # the lost job's try failed and was retried
    from bertops.orchestration.failures import task_log_path

    first = Path(task_log_path(root / ".bertops" / "airflow" / "logs", "bert_retrain", run_id, "finetune", 1))
    line = next(
        (x for x in first.read_text(errors="replace").splitlines() if "bertops: finetune failed" in x), ""
    )
    assert "finetune failed (try 1 of 3, retried after a delay): ConnectionError" in line, line
    print(f"FAULT ray head (group, during finetune): service answering {usual} again after {fault.back_s:.1f} s; "
          f"retrain {final['state']}, tries {tries}; requests during: {dict(fault.during)}; finetune try 1: "
          f"{line[line.index('bertops:'):][:300]}")  # fmt: skip


def test_the_stack_ran_no_dag_nobody_asked_for_and_takes_a_drift_event(
    stack: tuple[Path, dict[str, str]],
) -> None:
    """Last in this module: the stack has been up, DAGs unpaused, for the whole module (well over two minutes)
    and ran only what the tests asked for (manual runs) or a tick after it started (none, unless the module spans
    one): nothing for a tick that passed before the stack existed, and no asset-triggered run.
    Then the drift Asset event that ``bertops monitor --check`` sends through the API is recorded with its report
    (bert_retrain is paused first, so the event queues a run instead of training here)."""
    from bertops.config import load_config
    from bertops.orchestration.retrain import DAG_ID, DATA_DAG_ID, DRIFT_ASSET, MONITOR_DAG_ID
    from bertops.orchestration.stack import airflow_client

    root, _ = stack
    client = airflow_client(load_config(root / "params.yaml"), root)
    runs = [
        r
        for d in (DATA_DAG_ID, MONITOR_DAG_ID, DAG_ID)
        for r in client.request("GET", f"/dags/{d}/dagRuns")["dag_runs"]
    ]

    def asked(run: dict) -> bool:  # by a test, or by a tick that came after this module started the stack
        after = datetime.fromisoformat(run["run_after"]).timestamp() >= MODULE_STARTED
        return run["run_type"] == "manual" or (run["run_type"] == "scheduled" and after)

    unasked = [(r["dag_id"], r["dag_run_id"], r["run_type"], r["run_after"]) for r in runs if not asked(r)]
    assert not unasked, unasked
    # the scheduled DAGs are unpaused (as `stack up` leaves them) and their next run is a tick still to come
    for dag_id in (DATA_DAG_ID, MONITOR_DAG_ID):
        dag = client.get_dag(dag_id)
        assert dag["is_paused"] is False, dag
        assert datetime.fromisoformat(dag["next_dagrun_run_after"]).timestamp() > MODULE_STARTED, dag

    client.set_paused(DAG_ID, True)
    event = client.emit_asset_event(DRIFT_ASSET, {"json_path": "/tmp/drift.json", "source": "test"})
    events = client.request("GET", "/assets/events", params={"asset_id": event["asset_id"]})["asset_events"]
    assert any(e["id"] == event["id"] and e["extra"]["json_path"] == "/tmp/drift.json" for e in events), (
        events
    )
