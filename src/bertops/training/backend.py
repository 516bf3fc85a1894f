"""Ray Train's TensorFlow set-up without TensorFlow in the driver or the Train controller.

``ray.train.tensorflow.TensorflowTrainer`` does two things: it sets ``TF_CONFIG`` (the worker addresses and
this worker's index) on every worker before the loop starts, and it imports ``ray.train.tensorflow``, whose
``__init__`` imports TensorFlow (~6-25 s) in the driver and, when the controller unpickles its backend
config, in the controller too. :func:`make_trainer` builds the same ``DataParallelTrainer`` with
:class:`TensorflowBackendConfig`, which lives here, so only the workers ever import TensorFlow. It leaves out
the ``TF_USE_LEGACY_KERAS=1`` Ray also sets: the loop uses Keras 3 (``import keras``), never ``tf.keras``.

The backend's first act on each worker is to start importing Keras and TensorFlow on a background thread
(seconds on a small machine), so that the import overlaps the rest of Ray Train's set-up (the worker
addresses, ``TF_CONFIG``, the launch of the loop); the loop waits for it (:func:`wait_for_tensorflow`)
before its own imports, so the two threads never import at the same time.

    trainer = make_trainer(train_loop_per_worker, train_loop_config=plan.to_dict(), scaling_config=...,
                           run_config=...)
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig

TF_CONFIG = "TF_CONFIG"
_tensorflow_import: threading.Thread | None = None  # on a worker: the background import, once started
backend_started_at: float | None = None  # on a worker: when the backend reached it (start-up parts)


def _import_keras() -> None:
    # A failure is left to the loop's own import, which raises it again where it is reported.
    with contextlib.suppress(BaseException):
        import keras  # noqa: F401  (Keras 3 imports its TensorFlow backend)


def start_tensorflow_import() -> None:
    """On a worker: import Keras and TensorFlow on a background thread, once (returns at once)."""
    global _tensorflow_import, backend_started_at
    if _tensorflow_import is None:
        backend_started_at = time.time()
        _tensorflow_import = threading.Thread(target=_import_keras, name="bertops-import-tf", daemon=True)
        _tensorflow_import.start()


def wait_for_tensorflow() -> None:
    """Block until :func:`start_tensorflow_import`'s import is over (no-op where it never started)."""
    if _tensorflow_import is not None:
        _tensorflow_import.join()


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On a worker: the cluster spec ``MultiWorkerMirroredStrategy`` reads.

    One worker gets none (and loses one a reused process may still hold): without ``TF_CONFIG`` the strategy
    runs locally and TensorFlow starts no gRPC server, which would listen on every interface and run any graph
    it is sent. Several workers need it; their server lives as long as the worker process.
    """
    if len(worker_addresses) == 1:
        os.environ.pop(TF_CONFIG, None)
        return
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

        worker_group.execute(start_tensorflow_import)
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
