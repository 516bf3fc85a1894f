"""Fixtures of the infra tests (helpers live in ``infra_helpers``).

- ``locked`` (uv.lock versions), ``kuberay`` (the strict ray.io/v1 validator, for Kubernetes 1.30 and latest);
- real services, session-scoped, each on a free 127.0.0.1 port and stopped by its own PID/process group:
  ``postgres`` (Debian's PostgreSQL in a temp dir, password auth), ``s3_server`` (moto's S3-compatible server),
  ``mlflow_postgres_s3`` (``mlflow server`` on both, configured like infra/kubernetes/mlflow.yaml).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import VENV_BIN, free_port, stop_group, wait_http
from tests.infra.infra_helpers import K8S_VERSIONS, errors_of, kuberay_validator, lock_versions


@pytest.fixture(scope="session")
def locked() -> dict[str, str]:
    return lock_versions()


@pytest.fixture(scope="session")
def kuberay() -> Callable[[dict[str, Any]], list[str]]:
    validators = {v: kuberay_validator(v) for v in K8S_VERSIONS}
    return lambda doc: [
        f"k8s {v or 'latest'}: {e}" for v, val in validators.items() for e in errors_of(val, doc)
    ]


# ----------------------------------------------------------------------- real services for the scale-out tests
@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def uri(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        # The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` (idempotent) and return its SQLAlchemy URI."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname="postgres")  # fmt: skip
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server (Debian's binaries) in a temp dir on a free 127.0.0.1 port, password auth.

    PostgreSQL refuses to run as root, so as root (CI) it runs as the ``postgres`` user via ``runuser``.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries not installed (make setup-system)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bertops-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(password)
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
                    "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                   check=True, capture_output=True)  # fmt: skip
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield Postgres("127.0.0.1", port, "postgres", password)
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "bertops-test"
    secret_key: str = "bertops-test-secret"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to use this store: the variables the deployments set from their Secrets."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")  # fmt: skip

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible HTTP server (moto's standalone server) on a free 127.0.0.1 port."""
    root = Path(tempfile.mkdtemp(prefix="bertops-s3-"))
    port, log = free_port(), root / "s3.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", timeout=120, proc=proc, log=log)
        yield S3Server(endpoint)
    finally:
        stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class ScaleoutMlflow:
    uri: str
    backend_uri: str
    bucket: str


@pytest.fixture(scope="session")
def mlflow_postgres_s3(postgres: Postgres, s3_server: S3Server) -> Iterator[ScaleoutMlflow]:
    """``mlflow server`` as deployed (infra/kubernetes/mlflow.yaml): PostgreSQL backend, S3 artifacts it proxies.

    Configured through the same environment variables the deployment sets; the backend URI carries a password.
    """
    backend = postgres.create_database("mlflow")
    bucket = "bertops-mlflow"
    s3_server.client().create_bucket(Bucket=bucket)
    root = Path(tempfile.mkdtemp(prefix="bertops-mlflow-pg-"))
    port, log = free_port(), root / "server.log"
    env = {**os.environ, **s3_server.env, "MLFLOW_BACKEND_STORE_URI": backend,
           "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/artifacts",
           # bertops runs no server-side MLflow jobs; the job executor would start five more processes.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fmt: skip
    cmd = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--serve-artifacts",
           "--workers", "1"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=root
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=180, proc=proc, log=log)
        yield ScaleoutMlflow(uri=uri, backend_uri=backend, bucket=bucket)
    finally:
        stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)
