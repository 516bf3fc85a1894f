"""Image definitions agree with the lock: a version bump in uv.lock without the Dockerfile (or back) fails here.

Docker cannot build here (no engine), so ``infra/docker/Dockerfile`` is parsed with ``dockerfile-parse`` and its
stages, base images, ARGs and install commands are checked against uv.lock, pyproject.toml and the Makefile.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.infra.infra_helpers import INFRA, REPO, makefile_var

DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
TARGETS = ("ray-cpu", "ray-gpu", "airflow")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


def parse() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) with ``${ARG}`` in FROM lines substituted."""
    from dockerfile_parse import DockerfileParser

    structure = DockerfileParser(path=str(DOCKERFILE), env_replace=False).structure
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in structure:
        kind, value = ins["instruction"], ins["value"]
        if kind == "ARG" and current is None and "=" in value:
            k, v = value.split("=", 1)
            args[k] = v.strip('"')
        elif kind == "FROM":
            image, _, name = value.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = Stage(name.strip() or image, image)
            stages[current.name] = current
        elif current is not None:
            current.instructions.append(ins)
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse()


def test_targets_exist_and_base_images_are_pinned(dockerfile) -> None:
    _, stages = dockerfile
    assert set(TARGETS) <= set(stages)
    for stage in stages.values():
        repo, _, tag = stage.base.rpartition(":")
        assert repo and tag and tag != "latest", f"stage {stage.name}: base image {stage.base} is not pinned"


def test_base_images_and_args_match_the_lock(dockerfile, locked: dict[str, str]) -> None:
    args, stages = dockerfile
    assert args["RAY_VERSION"] == locked["ray"], "Dockerfile RAY_VERSION != uv.lock's ray"
    assert args["AIRFLOW_VERSION"] == locked["apache-airflow"], "Dockerfile AIRFLOW_VERSION != uv.lock"
    assert args["TENSORFLOW_VERSION"] == locked["tensorflow-cpu"], (
        "GPU TensorFlow != the locked tensorflow-cpu"
    )
    assert args["UV_VERSION"] == makefile_var("UV_VERSION"), "Dockerfile UV_VERSION != Makefile UV_VERSION"
    assert args["DATA_PACKAGES"].split() == makefile_var("DATA_PACKAGES").split(), "DATA_PACKAGES drifted"
    py = args["PYTHON_VERSION"]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={py}" in requires.replace(" ", ""), f"PYTHON_VERSION {py} vs requires-python {requires}"
    assert stages["ray-cpu"].base == f"rayproject/ray:{locked['ray']}-py{py.replace('.', '')}-cpu"
    assert stages["ray-gpu"].base == f"rayproject/ray:{locked['ray']}-py{py.replace('.', '')}-gpu"
    assert stages["airflow"].base == f"apache/airflow:{locked['apache-airflow']}-python{py}"
    assert stages["uv"].base == f"ghcr.io/astral-sh/uv:{makefile_var('UV_VERSION')}"


def _shell_commands(stage: Stage) -> list[list[str]]:
    """Each ``&&``-separated command of the stage's RUN lines, as words (after --mount options)."""
    out = []
    for run in stage.values("RUN"):
        body = re.sub(r"^(--mount=\S+\s+)+", "", run)
        for part in re.split(r"&&", body.replace("\\\n", " ")):
            if part.strip():
                out.append(shlex.split(part))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_python_packages_come_only_from_the_lock(dockerfile, target: str) -> None:
    _, stages = dockerfile
    commands = [c for c in _shell_commands(stages[target]) if c[:1] == ["uv"]]
    syncs = [c for c in commands if c[1] == "sync"]
    assert syncs, f"{target}: no uv sync"
    for c in syncs:
        assert "--frozen" in c and "--no-dev" in c, f"{target}: {' '.join(c)} must install exactly the lock"
        assert c[c.index("--extra") + 1] == "cloud", (
            f"{target}: the S3 artifact store / DVC remote need 'cloud'"
        )
    for c in commands:
        if c[1:3] == ["pip", "install"]:
            pkgs = [w for w in c[3:] if not w.startswith("-")]
            allowed = {"${DATA_PACKAGES}", "tensorflow[and-cuda]==${TENSORFLOW_VERSION}"}
            assert "--no-deps" in c or pkgs == ["tensorflow[and-cuda]==${TENSORFLOW_VERSION}"], c
            assert set(pkgs) <= allowed, f"{target}: unpinned or extra install {' '.join(c)}"
    has_tf_swap = any(
        c[1:3] == ["pip", "install"] and "tensorflow[and-cuda]" in " ".join(c) for c in commands
    )
    assert has_tf_swap == (target == "ray-gpu"), f"{target}: only the GPU image swaps TensorFlow"


@pytest.mark.parametrize("target", TARGETS)
def test_copied_sources_exist_and_pass_the_dockerignore(dockerfile, target: str) -> None:
    _, stages = dockerfile
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*"):
                result = not neg
        return result

    for copy in stages[target].values("COPY"):
        if copy.startswith("--from="):
            continue
        *sources, _dest = copy.split()
        for src in sources:
            assert (REPO / src).exists(), f"{target}: COPY source {src} is not in the repository"
            assert not ignored(src), f"{target}: COPY source {src} is excluded by {DOCKERIGNORE.name}"


def test_images_run_as_the_users_their_platforms_expect(dockerfile) -> None:
    _, stages = dockerfile
    assert stages["ray-cpu"].values("USER")[-1] == "1000"  # KubeRay / rayproject images: uid 1000 `ray`
    assert stages["ray-gpu"].values("USER")[-1] == "1000"
    assert stages["airflow"].values("USER")[-1] == "50000"  # the official chart's default runAsUser
    env = " ".join(stages["airflow"].values("ENV"))
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/bertops/dags" in env
    for (
        target
    ) in TARGETS:  # Airflow builds Ray job entrypoints from this dir; the Ray images have the same one
        assert "BERTOPS_PROJECT_DIR=/opt/bertops" in " ".join(stages[target].values("ENV")), target
        assert stages[target].values("WORKDIR")[-1] == "/opt/bertops", target
