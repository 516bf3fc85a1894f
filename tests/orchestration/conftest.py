"""Fixtures for the orchestration tests: an isolated Airflow home (SQLite metadata DB, our dags/ folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def airflow_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an isolated Airflow: temp AIRFLOW_HOME, bertops' dags/, no examples."""
    from bertops.orchestration.stack import airflow_settings

    env = {**os.environ, **airflow_settings(home, REPO_ROOT, api_port=0)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated Airflow metadata DB in a temp AIRFLOW_HOME (~15-30 s once per session)."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home)
    proc = subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield home
