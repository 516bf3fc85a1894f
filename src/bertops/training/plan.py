"""``RunPlan``: everything a training worker needs, resolved once on the driver.

The driver turns the config and the data manifests into a plan (absolute paths, step counts, the global
batch); Ray ships it to every worker as ``train_loop_config``. Plain data only: no TensorFlow needed to
build or read it, and it is logged with the run (``plan.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["pretrain", "finetune"]


@dataclass
class RunPlan:
    kind: Kind
    task: str  # pretraining | classification | ner
    manifest: str  # absolute path of the record set's manifest.json
    train_split: str
    eval_split: str
    test_split: str | None
    vocab_size: int
    max_seq_length: int
    max_predictions_per_seq: int | None
    labels: list[str] | None
    model: dict[str, Any]  # the ``model`` config section (architecture for init=scratch)
    optimizer: dict[str, Any]  # the OptimizerConfig as data
    init: str  # scratch | bundle:<dir> | hf:<dir> | google:<dir>
    batch_size: int  # per worker, per micro-batch
    accumulation_steps: int
    num_workers: int
    total_steps: int  # optimizer updates
    steps_per_epoch: int | None  # fine-tuning: an epoch boundary triggers evaluation
    eval_every_steps: int
    eval_batches: int | None  # None: the whole eval split
    checkpoint_every_steps: int
    log_every_steps: int
    early_stopping_patience: int | None
    class_weights: str  # none | balanced
    jit_compile: bool
    sequence_buckets: list[int]  # dynamic padding: the widths a batch is cut to ([] = max_seq_length)
    seed: int
    tracking_uri: str
    run_id: str
    vocab_file: str
    lowercase: bool
    strip_accents: bool
    data_version: str
    pretrain_run_id: str | None = None
    peak_tflops: float | None = None  # per device, for model FLOPs utilisation; None = look up the GPU
    extra: dict[str, Any] = field(default_factory=dict)
    # The records' encoding settings (bertops.data.tokenizer.EncodingSettings), stored in the bundle.
    tokenizer: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False  # project.deterministic: TensorFlow op determinism on every worker

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer update across all workers: batch x accumulation x workers."""
        return self.batch_size * self.accumulation_steps * self.num_workers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)
