"""Helpers for the infra tests: the locked versions, the YAML documents under infra/, and offline validators.

Schemas come from pinned packages, nothing is downloaded: Kubernetes from ``kubernetes-validate`` (strict, so an
unknown field fails), compose-spec from ``check-jsonschema``'s vendored copy, KubeRay from
``infra/schemas/ray.io-v1.schema.json`` whose pod templates resolve to ``kubernetes-validate``'s definitions.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
# Oldest Kubernetes the manifests promise to work on, and the newest the schema package knows.
K8S_VERSIONS = ("1.30", None)


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path``, each tagged with its file for error messages."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is not a mapping"
    return docs


def lock_versions() -> dict[str, str]:
    """``{package name: version}`` of every package in uv.lock."""
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    return {p["name"]: p.get("version", "") for p in lock["package"]}


def makefile_var(name: str) -> str:
    """The value of ``NAME := value`` in the Makefile."""
    m = re.search(rf"^{name}\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert m, f"Makefile: no {name} variable"
    return m.group(1).strip()


def _k8s_schema_dir(version: str | None) -> tuple[Path, str]:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions, latest_version

    want = version or latest_version()
    chosen = [
        v for v in all_versions() if tuple(map(int, v.split(".")[:2])) <= tuple(map(int, want.split(".")))
    ][-1]
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{chosen}-local-strict"
    return base, chosen


def kuberay_validator(version: str | None = None) -> Any:
    """A Draft 2020-12 validator for ray.io/v1 resources, pod templates checked by Kubernetes' strict schema."""
    import jsonschema
    from referencing import Registry, Resource

    base, _ = _k8s_schema_dir(version)
    defs = Resource.from_contents(json.loads((base / "_definitions.json").read_text()))
    schema = json.loads((INFRA / "schemas" / "ray.io-v1.schema.json").read_text())
    registry = defs @ Registry().with_resource("/api/_definitions.json", defs)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_k8s(doc: dict[str, Any], version: str | None = None) -> None:
    """Validate one built-in Kubernetes object strictly (unknown fields fail) against ``version``'s schema."""
    import kubernetes_validate

    _, chosen = _k8s_schema_dir(version)
    kubernetes_validate.validate(doc, chosen, strict=True)


def k8s_definition_validator(name: str, version: str | None = None) -> Any:
    """A validator for one Kubernetes definition, e.g. ``io.k8s.api.core.v1.Volume`` (for Helm values parts)."""
    import jsonschema
    from referencing import Registry, Resource

    base, _ = _k8s_schema_dir(version)
    contents = json.loads((base / "_definitions.json").read_text())
    defs = Resource.from_contents(contents)
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=defs @ Registry())


def compose_spec_validator() -> Any:
    """The compose-spec JSON schema vendored (pinned) by check-jsonschema."""
    import check_jsonschema
    import jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def errors_of(validator: Any, doc: Any) -> list[str]:
    """All schema errors as ``path: message`` lines (empty when valid)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
