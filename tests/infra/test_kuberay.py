"""KubeRay manifests: schema-valid offline, and read the way Ray itself reads them.

- Strict schema (``infra/schemas/ray.io-v1.schema.json`` + Kubernetes' PodTemplateSpec from kubernetes-validate).
- The RayCluster as KubeRay's in-tree autoscaler sees it: Ray's own ``_derive_autoscaling_config_from_ray_cr``
  turns it into node types, then Ray's ``validate_config`` checks them against Ray's cluster schema.
- Serve configs through Ray Serve's ``ServeDeploySchema``, runtime envs through ``RuntimeEnv``, and every
  ``--set`` override through bertops' own config validation.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.infra.infra_helpers import INFRA, REPO, load_docs

from bertops.config import load_config

KUBERAY_FILES = sorted((INFRA / "kuberay").glob("*.yaml"))
IMAGE_DIR = "/opt/bertops"  # WORKDIR of the images (infra/docker/Dockerfile)


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    return [s for s in (spec if doc["kind"] == "RayCluster" else None, spec.get("rayClusterSpec"),
                        spec.get("rayClusterConfig")) if s]  # fmt: skip


def _containers(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])
    ]
    return [(name, c) for name, g in groups for c in g["template"]["spec"]["containers"]]


def test_every_kuberay_file_is_found() -> None:
    names = {p.name for p in KUBERAY_FILES}
    assert {"raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-finetune.yaml", "rayservice.yaml"} <= names


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_resources_validate(path: Path, kuberay) -> None:
    for doc in load_docs(path):
        assert kuberay(doc) == [], f"{path.relative_to(REPO)} ({doc['kind']}) is invalid"


def test_kuberay_schema_rejects_common_mistakes(kuberay) -> None:
    """Negative controls: the validator is not vacuous."""
    cluster = load_docs(INFRA / "kuberay" / "raycluster.yaml")[0]
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resorces"] = {}
    assert any("resorces" in e for e in kuberay(typo))
    not_string = copy.deepcopy(cluster)
    not_string["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("num-cpus" in e for e in kuberay(not_string))
    misplaced = copy.deepcopy(cluster)
    misplaced["spec"]["workerGroups"] = misplaced["spec"].pop("workerGroupSpecs")
    assert any("workerGroups" in e for e in kuberay(misplaced))
    job = load_docs(INFRA / "kuberay" / "rayjob-finetune.yaml")[0]
    both = copy.deepcopy(job)
    both["spec"]["rayClusterSpec"] = cluster["spec"]
    assert kuberay(both), "a RayJob with both clusterSelector and rayClusterSpec must be refused"


def test_raycluster_autoscaling_as_ray_reads_it() -> None:
    """The in-tree autoscaler's view: a head that runs no tasks, CPU workers, GPU workers that scale from zero."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import validate_config

    cluster = load_docs(INFRA / "kuberay" / "raycluster.yaml")[0]
    config = _derive_autoscaling_config_from_ray_cr(cluster)
    validate_config(config)  # Ray's own cluster-config schema (ray/autoscaler/ray-schema.json)
    types = config["available_node_types"]
    assert types["headgroup"]["resources"].get("CPU", 0) == 0, "the head must not take training work"
    gpu, cpu = types["gpu"], types["cpu"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 2
    assert cpu["resources"].get("GPU", 0) == 0 and cpu["min_workers"] >= 1
    assert config["max_workers"] == gpu["max_workers"] + cpu["max_workers"]
    # A fine-tuning job as configured in rayjob-finetune.yaml fits on the GPU group once it has scaled up.
    job = _entrypoint_overrides(
        load_docs(INFRA / "kuberay" / "rayjob-finetune.yaml")[0]["spec"]["entrypoint"]
    )
    cfg = load_config(REPO / "params.yaml", job[2])
    s = cfg.finetune.scaling
    assert (
        s.use_gpu
        and s.gpus_per_worker <= gpu["resources"]["GPU"]
        and s.cpus_per_worker <= gpu["resources"]["CPU"]
    )
    assert s.num_workers <= gpu["max_workers"]


def test_ray_version_and_images_match_the_lock(locked: dict[str, str]) -> None:
    project_version = _project_version()
    for path in KUBERAY_FILES:
        for doc in load_docs(path):
            for cluster in _cluster_specs(doc):
                assert cluster["rayVersion"] == locked["ray"], f"{path.name}: rayVersion != uv.lock's ray"
                for group, container in _containers(cluster):
                    wants_gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
                    suffix = "gpu" if wants_gpu else "cpu"
                    assert container["image"].endswith(f"bertops-ray:{project_version}-{suffix}"), (
                        f"{path.name}: group {group} uses {container['image']}; expected the {suffix} image "
                        f"tagged with the project version {project_version}"
                    )


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _entrypoint_overrides(entrypoint: str) -> tuple[str, str, list[str]]:
    """``cd DIR && python SCRIPT --params P --set k=v ...`` -> (script, params, overrides)."""
    words = shlex.split(entrypoint)
    assert words[:3] == ["cd", IMAGE_DIR, "&&"], f"entrypoint must start in {IMAGE_DIR}: {entrypoint}"
    words = words[3:]
    assert words[0] == "python", entrypoint
    script, rest = words[1], words[2:]
    params, overrides = "params.yaml", []
    it = iter(rest)
    for word in it:
        if word == "--params":
            params = next(it)
        elif word == "--set":
            overrides.append(next(it))
        else:
            raise AssertionError(f"unexpected entrypoint argument {word!r} in {entrypoint!r}")
    return script, params, overrides


@pytest.mark.parametrize("name", ["rayjob-pretrain.yaml", "rayjob-finetune.yaml"])
def test_rayjob_entrypoint_is_a_valid_bertops_run(name: str) -> None:
    from ray.runtime_env import RuntimeEnv

    spec = load_docs(INFRA / "kuberay" / name)[0]["spec"]
    script, params, overrides = _entrypoint_overrides(spec["entrypoint"])
    assert script == f"ray_jobs/{name.removeprefix('rayjob-')[:-5]}.py"
    assert (REPO / params).is_file()
    cfg = load_config(REPO / params, overrides)  # raises ConfigError naming any bad key
    section = cfg.pretrain if "pretrain" in name else cfg.finetune
    assert section.scaling.use_gpu and cfg.project.data_dir.startswith("/mnt/bertops")
    RuntimeEnv(**yaml.safe_load(spec.get("runtimeEnvYAML") or "{}"))


def test_rayjob_entrypoint_scripts_exist() -> None:
    """The scripts the RayJobs run are in the repository (and therefore in the image)."""
    for name in ("rayjob-pretrain.yaml", "rayjob-finetune.yaml"):
        script, _, _ = _entrypoint_overrides(load_docs(INFRA / "kuberay" / name)[0]["spec"]["entrypoint"])
        if not (REPO / script).is_file():
            pytest.xfail(f"{script} has not landed yet (training issue)")


@pytest.mark.parametrize(
    "source", ["rayservice", "compose"], ids=["kuberay/rayservice.yaml", "compose/serve.yaml"]
)
def test_serve_config_builds_the_serving_app_config(source: str) -> None:
    """Ray Serve's own schema accepts the serve config, and its builder arguments resolve to a valid config."""
    from ray.serve.schema import ServeDeploySchema

    if source == "rayservice":
        raw = yaml.safe_load(load_docs(INFRA / "kuberay" / "rayservice.yaml")[0]["spec"]["serveConfigV2"])
    else:
        raw = yaml.safe_load((INFRA / "compose" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "bertops.serving.app:build_app"
    args = dict(app.args)
    assert args["params"] == f"{IMAGE_DIR}/params.yaml"
    # Resolve the same arguments the builder gets, against this repository's params.yaml.
    args["params"] = str(REPO / "params.yaml")
    from bertops.serving.app import config_from_args

    cfg = config_from_args(args)
    assert cfg.serving.model_alias == "champion"
