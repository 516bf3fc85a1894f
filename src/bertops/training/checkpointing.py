"""The training state in a checkpoint directory: model weights, optimizer state, loop position.

Layout (one directory, persisted by ``ray.train.report(..., checkpoint=Checkpoint.from_directory(dir))``)::

    weights.npz     model.weights, in order (arr_0 .. arr_N)
    optimizer.npz   optimizer.variables, in order (iterations, moments, loss scale ...)
    state.json      LoopState: step, epoch, best metric, patience counter, MLflow run id, ...

Plain NumPy arrays keep the format independent of the distribution strategy: any worker count (or a single
process) can restore it. Restoring checks every count and shape and names the variable that differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = "weights.npz"
OPTIMIZER = "optimizer.npz"
STATE = "state.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose variables do not fit the model or optimizer being restored."""


@dataclass
class LoopState:
    """Where the loop is: everything besides the variables that a resumed run needs."""

    step: int = 0  # optimizer updates done (= batches consumed per worker; the data position)
    epoch: int = 0  # completed epochs (fine-tuning)
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped_early: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None  # the step last_eval was measured at
    train_time_s: float = 0.0  # accumulated time inside train steps (all attempts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoopState:
        return cls(**json.loads(text))


def _values(variables: list[Any]) -> list[np.ndarray]:
    return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def save_checkpoint(directory: str | Path, model: Any, optimizer: Any, state: LoopState) -> Path:
    """Write the three files into ``directory`` (created); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / WEIGHTS, *_values(model.weights))
    np.savez(directory / OPTIMIZER, *_values(optimizer.variables))
    (directory / STATE).write_text(state.to_json(), encoding="utf-8")
    return directory


def _assign(kind: str, variables: list[Any], path: Path) -> None:
    with np.load(path) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(arrays) != len(variables):
        raise CheckpointMismatchError(
            f"{path}: holds {len(arrays)} {kind} variables, the {kind} being restored has {len(variables)}"
        )
    for var, value in zip(variables, arrays, strict=True):
        if tuple(var.shape) != value.shape:
            name = getattr(var, "path", None) or var.name
            raise CheckpointMismatchError(
                f"{path}: {kind} variable {name!r} has shape {tuple(var.shape)}, the checkpoint {value.shape}"
            )
        var.assign(value)


def load_checkpoint(directory: str | Path, model: Any, optimizer: Any) -> LoopState:
    """Restore model and optimizer variables in place from ``directory``; return the loop state."""
    directory = Path(directory)
    for name in (WEIGHTS, OPTIMIZER, STATE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} lacks {name}")
    _assign("model", list(model.weights), directory / WEIGHTS)
    _assign("optimizer", list(optimizer.variables), directory / OPTIMIZER)
    return LoopState.from_json((directory / STATE).read_text(encoding="utf-8"))


def temp_checkpoint_dir(prefix: str = "bertops-ckpt-") -> Path:
    """A fresh local directory to stage a checkpoint in before Ray persists it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR")))
