"""Fixtures of the infra tests (helpers live in ``infra_helpers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
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
