"""Ray Train's TensorFlow set-up without TensorFlow in the driver or the Train controller.

``ray.train.tensorflow.TensorflowTrainer`` does two things: it sets ``TF_CONFIG`` (the worker addresses and
this worker's index) on every worker before the loop starts, and it imports ``ray.train.tensorflow``, whose
``__init__`` imports TensorFlow (~6-25 s) in the driver and, when the controller unpickles its backend
config, in the controller too. :func:`make_trainer` builds the same ``DataParallelTrainer`` with
:class:`TensorflowBackendConfig`, which lives here, so only the workers ever import TensorFlow. It leaves out
the ``TF_USE_LEGACY_KERAS=1`` Ray also sets: the loop uses Keras 3 (``import keras``), never ``tf.keras``.

    trainer = make_trainer(train_loop_per_worker, train_loop_config=plan.to_dict(), scaling_config=...,
                           run_config=...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig

TF_CONFIG = "TF_CONFIG"


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On a worker: the cluster spec ``MultiWorkerMirroredStrategy`` reads."""
    os.environ[TF_CONFIG] = json.dumps(
        {"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}}
    )


class _TensorflowBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: TensorflowBackendConfig) -> None:
        import ray
        from ray._common.network_utils import build_address
        from ray.train._internal.utils import get_address_and_port

        def address() -> str:
            return build_address(*get_address_and_port())

        urls = worker_group.execute(address)
        ray.get(
            [
                worker_group.execute_single_async(i, _set_tf_config, worker_addresses=urls, index=i)
                for i in range(len(worker_group))
            ]
        )


@dataclass
class TensorflowBackendConfig(BackendConfig):
    """Ray Train backend config: ``TF_CONFIG`` on every worker (as Ray's own ``TensorflowConfig``)."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _TensorflowBackend

    def to_dict(self) -> dict[str, Any]:
        return {}


def make_trainer(train_loop_per_worker: Callable[[dict[str, Any]], None], **kwargs: Any) -> Any:
    """A Ray Train V2 ``DataParallelTrainer`` with the TensorFlow backend; ``kwargs`` as for the trainer."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer(train_loop_per_worker, backend_config=TensorflowBackendConfig(), **kwargs)
