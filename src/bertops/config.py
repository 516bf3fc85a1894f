"""The one typed configuration of bertops, loaded from ``params.yaml``.

Every stage reads its own section; the whole resolved config is logged with every run.
Validation happens once, here, and errors name the key and what was allowed::

    from bertops.config import load_config
    cfg = load_config("params.yaml", overrides=["finetune.learning_rate=3e-5"])
    cfg.finetune.learning_rate

Nothing happens at import time: no files are read, no directories created.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PARAMS = Path("params.yaml")
BUILTIN_PREFIX = "builtin:"


class ConfigError(ValueError):
    """A ``params.yaml`` (or override) that does not validate; the message names each bad key."""


class _Section(BaseModel):
    # extra="forbid": an unknown (misspelt) key is an error naming that key, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------- data
class SourceConfig(_Section):
    """Where one dataset comes from: a packaged set (``builtin:<name>``) or the user's own files."""

    source: str = Field(
        description="builtin:news | builtin:rotten_tomatoes | builtin:wnut16 | a path or glob | a directory "
        "(<dir>/<label>/<file>: classification)"
    )
    format: Literal["auto", "csv", "jsonl", "parquet", "text", "conll", "folder"] = Field(
        default="auto",
        description="File format; auto: from each file's extension, folder for a directory "
        "(one subfolder per label, one document per file).",
    )
    text_column: str = Field(default="text", description="Column (or JSON key) holding the text.")
    label_column: str = Field(default="label", description="Column holding the classification label.")
    tokens_column: str = Field(default="tokens", description="Column holding an NER example's token list.")
    tags_column: str = Field(default="tags", description="Column holding an NER example's tag list.")
    title_column: str | None = Field(
        default=None,
        description="Optional extra column whose text is prepended to the document text (e.g. a news title).",
    )
    exclude_labels: list[str] = Field(
        default_factory=list,
        description="Row filter for CSV-like sources: rows whose label_column value is listed here are dropped.",
    )
    label_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Rename raw labels to the canonical ones, e.g. {fresh: positive, rotten: negative}.",
    )
    max_records: int | None = Field(
        default=None,
        ge=1,
        description="Cap on the number of rows/documents read (None = all): small configs for tests and demos.",
    )
    encoding: str = Field(default="utf-8", description="Text encoding of the source files.")
    language: str = Field(
        default="en",
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="Language code (ISO 639) of the text, for sentence splitting of the corpus: en uses "
        "bertops' English rules, any other code the sentencex segmenter (docs/own_data.md).",
    )


class IngestConfig(_Section):
    corpus: SourceConfig = Field(
        default=SourceConfig(source="builtin:news", title_column="title"),
        description="The unlabelled corpus, split into sentences for pretraining and the vocabulary.",
    )
    classification: SourceConfig = Field(
        default=SourceConfig(
            source="builtin:rotten_tomatoes",
            label_column="category",
            exclude_labels=["plot"],
            label_mapping={"fresh": "positive", "rotten": "negative"},
        ),
        description="The labelled text-classification data set.",
    )
    ner: SourceConfig = Field(
        default=SourceConfig(source="builtin:wnut16", format="conll"),
        description="The token-tagging (NER) data set.",
    )
    drop_empty: bool = Field(
        default=True,
        description="Empty / whitespace-only texts are always reported; drop them (true) instead of failing (false).",
    )
    min_sentence_chars: int = Field(
        default=1,
        ge=1,
        description="Sentence splitting of the unlabelled corpus: shorter sentences (in characters) are dropped.",
    )
    feedback_dir: str | None = Field(
        default="data/raw/feedback",
        description="Feedback-labelled served texts, one folder per registered model "
        "(<dir>/<registry.model_name>/classification.jsonl or ner.jsonl; written by bert_retrain from the "
        "monitoring store): the model's own feedback is added to its train split only, texts already in the data "
        "dropped. A missing file: no feedback yet. null: not read.",
    )


class ValidateConfig(_Section):
    labels: list[str] | None = Field(
        default_factory=lambda: ["negative", "positive"],
        description="The canonical label set of the classification data (the model's output order); a label "
        "outside it is an error. null or []: the labels found in the data, sorted.",
    )
    min_class_fraction: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="The classification data fails when the rarest class is below this share of rows.",
    )
    max_duplicate_fraction: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Duplicate texts (same text, same label) are reported; above this share of rows they are an error.",
    )
    max_text_chars: int = Field(
        default=100_000,
        ge=1,
        description="A classification text longer than this (in characters) is an error.",
    )

    @field_validator("labels")
    @classmethod
    def _two_labels_or_none(cls, labels: list[str] | None) -> list[str] | None:
        if labels and len(labels) < 2:
            raise ValueError("needs at least two labels, or null to take them from the data")
        if labels and len(set(labels)) != len(labels):
            raise ValueError(f"lists a label twice: {labels}")
        return labels or None


class SplitConfig(_Section):
    seed: int = Field(default=13, description="Seed of the train/validation/test shuffle.")
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of labelled rows in the validation split."
    )
    test_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of labelled rows in the test split."
    )
    corpus_heldout_fraction: float = Field(
        default=0.02,
        ge=0,
        lt=0.5,
        description="Share of the corpus (in corpus_heldout_unit) held out to measure pretraining (masked-LM / "
        "NSP) quality.",
    )
    corpus_heldout_unit: Literal["characters", "words", "documents"] = Field(
        default="characters",
        description="What corpus_heldout_fraction measures; characters / words: documents longer than the "
        "held-out share are cut into runs of sentences first, so a few long documents still split near it.",
    )


class VocabConfig(_Section):
    vocab_file: str | None = Field(
        default=None,
        description="Adopt this vocab.txt (e.g. a checkpoint's); None: train a WordPiece vocabulary on the corpus.",
    )
    vocab_size: int = Field(default=8000, ge=1, description="Target size of a trained vocabulary.")
    min_frequency: int = Field(
        default=2, ge=1, description="Fewest occurrences for a piece to enter the vocabulary."
    )
    lowercase: bool = Field(default=True, description="Lower-case text before tokenising (an uncased model).")
    strip_accents: bool = Field(default=True, description="Remove accents before tokenising.")
    max_input_chars_per_word: int = Field(
        default=100, ge=1, description="A longer word becomes [UNK] instead of word pieces."
    )
    limit_alphabet: int = Field(
        default=1000, ge=1, description="Most distinct initial characters kept when training the vocabulary."
    )


class PretrainDataConfig(_Section):
    max_seq_length: int = Field(default=128, ge=8, description="Word pieces per pretraining instance.")
    short_seq_prob: float = Field(
        default=0.1, ge=0, le=1, description="Probability of a shorter, random target length for an instance."
    )
    masked_lm_prob: float = Field(default=0.15, gt=0, lt=1, description="Share of word pieces masked.")
    max_predictions_per_seq: int = Field(default=20, ge=1, description="Most masked positions per instance.")
    dupe_factor: int = Field(
        default=5, ge=1, description="Passes over the corpus, each with different masks and sentence pairs."
    )
    whole_word_masking: bool = Field(default=False, description="Mask all the pieces of a word together.")
    seed: int = Field(default=12345, description="Seed of instance creation and masking.")
    num_workers: int = Field(
        default=2,
        ge=1,
        description="Parallelism: documents are streamed into this many worker processes; each writes its own shards.",
    )
    shard_size: int = Field(
        default=10_000,
        ge=1,
        description="Instances per shard (bounds memory: a worker holds at most one shard of instances at a time).",
    )


class FinetuneDataConfig(_Section):
    max_seq_length: int = Field(
        default=128, ge=8, description="Word pieces per fine-tuning example; longer texts are truncated."
    )
    truncation: Literal["head", "head_tail"] = Field(
        default="head",
        description="Which pieces a too-long classification text keeps: head: the first max_seq_length - 2; "
        "head_tail: the first head_fraction of them and the rest from the end (stored with the model).",
    )
    head_fraction: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="head_tail truncation: share of the kept pieces taken from the start of the text.",
    )


# ---------------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """Architecture. ``preset`` picks a named size; any field set here overrides the preset."""

    preset: Literal["tiny", "mini", "small", "medium", "base", "large", "custom"] = Field(
        default="tiny", description="Named size; custom: set num_layers, hidden_dim and num_heads."
    )
    num_layers: int | None = Field(default=None, ge=1, description="Transformer layers (None: the preset's).")
    hidden_dim: int | None = Field(default=None, ge=1, description="Hidden size (None: the preset's).")
    num_heads: int | None = Field(default=None, ge=1, description="Attention heads (None: the preset's).")
    intermediate_dim: int | None = Field(
        default=None, ge=1, description="Feed-forward inner size (None: 4 x hidden_dim)."
    )
    max_sequence_length: int = Field(
        default=512, ge=8, description="Position-embedding limit; every max_seq_length must fit under it."
    )
    type_vocab_size: int = Field(default=2, ge=1, description="Segment (token type) ids.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout rate.")
    dtype_policy: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = Field(
        default="float32",
        description=(
            "Keras dtype policy (mixed precision). auto: mixed_bfloat16 where the worker's device runs bf16 and "
            "it was measured faster there (bertops.training.precision), else float32."
        ),
    )

    @model_validator(mode="after")
    def _custom_needs_sizes(self) -> ModelConfig:
        if self.preset == "custom":
            missing = [k for k in ("num_layers", "hidden_dim", "num_heads") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"preset 'custom' needs model.{', model.'.join(missing)}")
        return self


# ------------------------------------------------------------------------------------------- training
def _increasing_lengths(v: list[int]) -> list[int]:
    if any(b < 1 for b in v) or any(a >= b for a, b in itertools.pairwise(v)):
        raise ValueError(f"sequence_buckets must be positive and strictly increasing, got {v}")
    return v


SequenceBuckets = Annotated[list[int], AfterValidator(_increasing_lengths)]


class ScalingSettings(_Section):
    """How Ray Train places workers. The same code runs locally and on a cluster; only this changes."""

    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (data-parallel replicas).")
    use_gpu: bool = Field(default=False, description="Give each worker GPUs.")
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(
        default=1, ge=0, description="GPUs reserved per worker when use_gpu is set."
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster address; None means RAY_ADDRESS from the environment, else a local Ray started on demand.",
    )
    max_failures: int = Field(
        default=2, ge=0, description="Worker failures a run survives (restarting from its checkpoint)."
    )


class OptimizerConfig(_Section):
    name: Literal["adamw", "lamb"] = Field(default="adamw", description="Optimizer.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.01, ge=0, description="Decoupled weight decay.")
    warmup_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of the run's steps spent warming the learning rate up."
    )
    beta_1: float = Field(default=0.9, gt=0, lt=1, description="First-moment decay.")
    beta_2: float = Field(default=0.999, gt=0, lt=1, description="Second-moment decay.")
    epsilon: float = Field(default=1e-6, gt=0, description="Numerical-stability term.")
    clip_norm: float = Field(default=1.0, gt=0, description="Global gradient-norm clip.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Micro-batches whose gradients are summed per optimizer step."
    )


class PretrainConfig(_Section):
    init: str = Field(
        default="scratch",
        description=(
            "Initial weights: scratch | hf:<dir> | google:<dir> | bertops:<dir>: continued (domain-adaptive) "
            "pretraining of an existing model; build the records with its vocab.txt (vocab.vocab_file)."
        ),
    )
    batch_size: int = Field(default=32, ge=1, description="per worker; global = batch_size x num_workers")
    max_steps: int = Field(default=2000, ge=1, description="Optimizer steps of the pretraining run.")
    optimizer: OptimizerConfig = Field(
        default=OptimizerConfig(learning_rate=5e-4), description="The pretraining optimizer."
    )
    checkpoint_every_steps: int = Field(default=500, ge=1, description="Steps between checkpoints.")
    eval_every_steps: int = Field(default=500, ge=1, description="Steps between held-out evaluations.")
    eval_batches: int = Field(default=20, ge=1, description="Held-out batches per evaluation.")
    log_every_steps: int = Field(default=50, ge=1, description="Steps between logged training metrics.")
    jit_compile: bool = Field(default=False, description="XLA-compile the training step.")
    sequence_buckets: SequenceBuckets = Field(
        default=[16, 32, 64, 128],
        description=(
            "Dynamic padding: records are grouped by length into these buckets (the records' max_seq_length is "
            "always the last); each global batch holds one bucket and is cut to its width; [] pads every batch to "
            "max_seq_length."
        ),
    )
    scaling: ScalingSettings = Field(
        default=ScalingSettings(), description="Ray Train placement of pretraining."
    )
    output_dir: str = Field(
        default="artifacts/pretrain",
        description="Where the pretraining bundle (model.keras = BertPretrainer, vocab.txt, bertops.json) is written.",
    )
    run_name: str | None = Field(
        default=None,
        description=(
            "Ray Train run name; starting a run under the name of an interrupted one resumes it from its latest "
            'checkpoint. None: "pretrain-<UTC time>" (a fresh run each time).'
        ),
    )
    checkpoints_to_keep: int = Field(default=2, ge=1, description="Most recent checkpoints kept.")

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        if v == "scratch" or v.startswith(("hf:", "google:", "bertops:")):
            return v
        raise ValueError(
            f"pretrain.init must be 'scratch', 'hf:<dir>', 'google:<dir>' or 'bertops:<dir>', got {v!r}"
        )


class FinetuneConfig(_Section):
    task: Literal["classification", "ner"] = Field(
        default="classification", description="Sequence classification or token tagging (NER)."
    )
    init: str = Field(
        default="pretrained",
        description=(
            "Initial weights: scratch | pretrained (bertops' own pretraining output) | hf:<dir> | google:<dir> "
            "| a bertops model dir (bertops:<dir>)"
        ),
    )
    batch_size: int = Field(default=32, ge=1, description="per worker; global = batch_size x num_workers")
    epochs: int = Field(default=3, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Cap on optimizer steps (None: epochs decide)."
    )
    learning_rate: float = Field(
        default=1e-4,
        gt=0,
        description="The fine-tuning peak learning rate; it takes precedence over finetune.optimizer.learning_rate.",
    )
    optimizer: OptimizerConfig = Field(default=OptimizerConfig(), description="The fine-tuning optimizer.")
    early_stopping_patience: int = Field(
        default=2, ge=0, description="Epochs without validation improvement before stopping."
    )
    class_weights: Literal["none", "balanced"] = Field(
        default="none", description="balanced: weight the loss by inverse class frequency."
    )
    checkpoint_every_steps: int = Field(default=200, ge=1, description="Steps between checkpoints.")
    log_every_steps: int = Field(default=20, ge=1, description="Steps between logged training metrics.")
    jit_compile: bool = Field(default=False, description="XLA-compile the training step.")
    sequence_buckets: SequenceBuckets = Field(
        default=[16, 32, 64, 128],
        description=(
            "Dynamic padding: records are grouped by length into these buckets (the records' max_seq_length is "
            "always the last); each global batch holds one bucket and is cut to its width; [] pads every batch to "
            "max_seq_length."
        ),
    )
    scaling: ScalingSettings = Field(
        default=ScalingSettings(), description="Ray Train placement of fine-tuning."
    )
    output_dir: str | None = Field(
        default=None,
        description="The task bundle's stable path (model.keras, vocab.txt, label_map.json, bertops.json): a link "
        "to the newest run's own bundle (<parent>/runs/<run name>). None: artifacts/finetune for classification, "
        "artifacts/finetune-ner for NER, so one task's run never replaces another's bundle.",
    )
    run_name: str | None = Field(
        default=None,
        description='As pretrain.run_name: the same name resumes an interrupted run. None: "finetune-<UTC time>".',
    )
    checkpoints_to_keep: int = Field(default=2, ge=1, description="Most recent checkpoints kept.")

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        if v in ("scratch", "pretrained") or v.startswith(("hf:", "google:", "bertops:")):
            return v
        raise ValueError(
            f"finetune.init must be 'scratch', 'pretrained', 'hf:<dir>', 'google:<dir>' or 'bertops:<dir>', got {v!r}"
        )

    def bundle_dir(self) -> str:
        """The stable path of this task's bundle: ``output_dir``, or the task's default."""
        if self.output_dir:
            return self.output_dir
        return "artifacts/finetune" if self.task == "classification" else f"artifacts/finetune-{self.task}"


# ---------------------------------------------------------------------------- tracking and registry
class TrackingConfig(_Section):
    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; None: MLFLOW_TRACKING_URI from the environment, else the running local stack's server, else the embedded default under state_dir.",
    )
    pretrain_experiment: str = Field(
        default="bertops-pretrain", description="MLflow experiment of pretraining runs."
    )
    finetune_experiment: str = Field(
        default="bertops-finetune", description="MLflow experiment of fine-tuning runs."
    )
    evaluation_experiment: str = Field(
        default="bertops-evaluation", description="MLflow experiment of evaluation runs."
    )


class EvaluationConfig(_Section):
    length_buckets: list[int] = Field(
        default_factory=lambda: [32, 64],
        description="Text length buckets (in word pieces) for sliced metrics: [0,32), [32,64), [64,inf).",
    )
    calibration_bins: int = Field(default=10, ge=2, description="Bins of the reliability table and the ECE.")
    worst_examples: int = Field(
        default=25, ge=0, description="Most confidently wrong test predictions saved."
    )
    latency_repeats: int = Field(default=20, ge=1, description="Timed repeats per latency measurement.")
    output_dir: str = Field(
        default="artifacts/evaluation", description="Where the evaluation report is written."
    )


class RegistryConfig(_Section):
    model_name: str = Field(
        default="bert-sentiment", description="Registered model of the classification task."
    )
    ner_model_name: str = Field(default="bert-ner", description="Registered model of the NER task.")


class ShadowConfig(_Section):
    enabled: bool = Field(
        default=False,
        description="Run a candidate that passed the gate beside the champion on mirrored live traffic first.",
    )
    requests: int = Field(default=200, ge=1, description="Mirrored requests to compare before deciding.")
    duration_s: float = Field(
        default=900, gt=0, description="Longest shadow phase; it ends earlier once `requests` are compared."
    )
    min_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Share of mirrored requests the candidate must answer as the champion.",
    )
    max_p99_ratio: float = Field(
        default=1.5, gt=0, description="Candidate p99 latency over the champion's, at most."
    )
    max_errors: int = Field(default=0, ge=0, description="Candidate errors on mirrored requests, at most.")
    min_feedback: int = Field(
        default=30, ge=1, description="Feedback-labelled requests needed before their accuracy is judged."
    )
    max_feedback_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of accuracy on feedback-labelled requests versus the champion.",
    )
    queue_size: int = Field(
        default=256,
        ge=1,
        description="Mirrored requests waiting for the candidate; more are dropped (counted).",
    )
    batch_texts: int = Field(
        default=4,
        ge=1,
        description="Most mirrored texts per candidate call. A champion request that arrives during a shadow call "
        "waits for it, so small calls bound what shadowing adds to the champion's latency.",
    )
    quiet_ms: float = Field(
        default=5.0,
        ge=0,
        description="A shadow call starts only after the champion has had no batch running or queued for this "
        "long (a champion request that follows its predecessor's answer is not overtaken).",
    )


class CanaryConfig(_Section):
    enabled: bool = Field(
        default=False,
        description="Answer a share of live requests with the candidate before the alias moves.",
    )
    percent: float = Field(
        default=5,
        gt=0,
        le=100,
        description="First share of requests (chosen by a stable hash of the caller).",
    )
    steps: list[float] = Field(
        default=[25, 50],
        description="Later shares, widened in order once a step is healthy (then 100: the switch).",
    )
    step_requests: int = Field(default=100, ge=1, description="Candidate requests per step before widening.")
    step_duration_s: float = Field(default=600, gt=0, description="Longest wait for a step's requests.")
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Candidate error rate above which the canary rolls back."
    )
    max_p99_ratio: float = Field(
        default=1.5, gt=0, description="Candidate p99 over the champion's above which the canary rolls back."
    )

    @model_validator(mode="after")
    def _steps_widen(self) -> CanaryConfig:
        shares = [self.percent, *self.steps]
        if any(b <= a for a, b in itertools.pairwise(shares)) or any(not 0 < x <= 100 for x in shares):
            raise ValueError(f"canary shares must widen within (0, 100]: percent then steps gave {shares}")
        return self


class PromotionConfig(_Section):
    metric: str = Field(default="accuracy", description="The test metric the gate compares.")
    min_absolute: float = Field(default=0.6, ge=0, description="The candidate's metric must reach this.")
    ner_metric: str = Field(default="entity_f1", description="NER: the test metric the gate compares.")
    ner_min_absolute: float = Field(
        default=0.0,
        ge=0,
        description="NER: the candidate's ner_metric must reach this (the all-O baseline check, "
        "min_over_majority, applies as well).",
    )
    min_improvement: float = Field(
        default=0.0, description="Candidate minus champion on metric must be at least this."
    )
    min_over_majority: float = Field(
        default=0.02,
        ge=0,
        description="Classification: test accuracy must beat the majority-class baseline "
        "(always answering the most frequent test class) by at least this; NER: entity_f1 must beat the "
        "all-O baseline by at least this.",
    )
    max_regression: float = Field(
        default=0.05,
        ge=0,
        description="Largest allowed drop, versus the champion, of any per-class F1 or length-slice accuracy.",
    )
    max_latency_ms: float = Field(default=200.0, gt=0, description="p50 batch-1 inference latency")
    require_approval: bool = Field(
        default=False,
        description="Wait for a reviewer's approval before promoting (as mode: require_approval).",
    )
    approval_timeout_s: float = Field(default=3600, gt=0, description="How long to wait for a reviewer.")
    mode: Literal["auto", "require_approval", "never"] = Field(
        default="auto",
        description="auto: promote when the gate passes; require_approval: wait for a reviewer; never: gates only.",
    )
    shadow: ShadowConfig = Field(default=ShadowConfig(), description="Shadow phase on mirrored live traffic.")
    canary: CanaryConfig = Field(
        default=CanaryConfig(), description="Canary phase on a share of live traffic."
    )


# ---------------------------------------------------------------------------------------------- serving
class ServingConfig(_Section):
    host: str = Field(default="127.0.0.1", description="HTTP bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field(default="/", description="URL prefix of the API.")
    num_replicas: int | Literal["auto"] = Field(
        default=1, description="Model replicas; auto: autoscale between min_replicas and max_replicas."
    )
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling floor (num_replicas: auto).")
    max_replicas: int = Field(default=2, ge=1, description="Autoscaling ceiling (num_replicas: auto).")
    target_ongoing_requests: float = Field(
        default=16, gt=0, description="Requests in flight per replica the autoscaler aims for."
    )
    num_cpus_per_replica: float = Field(default=1, gt=0, description="CPUs reserved per replica.")
    num_gpus_per_replica: float = Field(default=0, ge=0, description="GPUs reserved per replica.")
    max_batch_size: int = Field(
        default=32,
        ge=1,
        description="Adaptive batching: up to max_batch_size *texts* per model call, from the requests that queued "
        "while the previous call ran (a request that finds the replica idle runs at once).",
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="Extra wait for more texts before a model call, only when requests already queued behind a "
        "busy replica fill less than max_batch_size; a lone request is never held. 0 = none.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight per replica (Ray Serve max_ongoing_requests); None = 2 x max_batch_size.",
    )
    max_texts_per_request: int = Field(default=64, ge=1, description="A request with more texts is rejected.")
    max_text_bytes: int = Field(default=10_000, ge=1, description="A longer text (UTF-8 bytes) is rejected.")
    max_body_bytes: int = Field(
        default=1_000_000, ge=1, description="A larger request body is rejected (413)."
    )
    poll_interval_s: float = Field(
        default=30, gt=0, description="How often replicas check the registry alias for a new model version."
    )
    model_alias: str = Field(default="champion", description="The registry alias served.")
    models: list[str] | None = Field(
        default=None,
        description="Registered models served, each at POST /models/{name}/predict following its own alias; "
        "POST /predict answers with registry.model_name. None: registry.model_name and registry.ner_model_name.",
    )
    ingress: Literal["proxy", "haproxy"] = Field(
        default="haproxy",
        description="HTTP path into the replicas. haproxy: Ray's HAProxy ingress with direct-to-replica HTTP "
        "(RAY_SERVE_ENABLE_HA_PROXY + RAY_SERVE_THROUGHPUT_OPTIMIZED), several times the throughput; its stats "
        "and Prometheus listeners on haproxy_admin_host. proxy: Ray Serve's Python HTTP proxy. Applied when "
        "bertops starts the Ray (bertops serve on a local Ray, the local stack); a cluster sets the same "
        "variables on its nodes.",
    )
    haproxy_stats_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="HAProxy stats page port (ingress haproxy); None = a free port.",
    )
    haproxy_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="HAProxy Prometheus port (ingress haproxy); None = a free port.",
    )
    haproxy_admin_host: str = Field(
        default="127.0.0.1",
        description="Address of HAProxy's stats and Prometheus listeners (ingress haproxy; Ray's template binds "
        "all interfaces, bertops' HAProxy launcher rebinds them here).",
    )


# ---------------------------------------------------------------------------------------- orchestration
class OrchestrationConfig(_Section):
    data_schedule: str = Field(default="@daily", description="Airflow schedule of the bert_data DAG.")
    retrain_schedule: str = Field(default="@weekly", description="Airflow schedule of the bert_retrain DAG.")
    airflow_url: str = Field(default="http://127.0.0.1:8080", description="Airflow API server.")
    ray_dashboard_url: str = Field(
        default="http://127.0.0.1:8265", description="Ray dashboard, where Ray jobs are submitted."
    )
    dvc_pool: str = Field(default="dvc", description="Airflow pool that serialises DVC tasks.")
    dags_paused: bool = Field(
        default=False,
        description="The local stack: whether `bertops stack up` leaves bert_data and bert_retrain paused.",
    )
    task_retries: int = Field(default=2, ge=0, description="Retries of a failed Airflow task.")
    retry_delay_s: int = Field(
        default=30, ge=0, description="Delay before the first retry; later ones back off exponentially."
    )
    ray_job_timeout_s: int = Field(default=3600, ge=1, description="Longest a Ray job may run.")
    job_python: str | None = Field(
        default=None,
        description=(
            "How Ray jobs start: the interpreter on the Ray head. None = this machine's venv python "
            "(the local stack); set both job_python and job_workdir for a remote cluster."
        ),
    )
    job_workdir: str | None = Field(
        default=None,
        description=(
            "How Ray jobs start: the directory on the Ray head that holds this checkout. None = this checkout "
            "(the local stack); set both job_python and job_workdir for a remote cluster."
        ),
    )
    stack_ray_cpus: int = Field(
        default=3,
        ge=1,
        description="The local stack (`bertops stack up`): logical CPUs the Ray head offers. One more than a "
        "2-core laptop has: the serving replica holds 1 while it mostly idles, and a 2-CPU training worker "
        "(2 TensorFlow threads) still fits beside it.",
    )
    stack_ray_object_store_mb: int = Field(
        default=512,
        ge=78,
        description="Object store of the local stack's Ray head (Ray's default is 30% of RAM; the pipeline needs little).",
    )
    stack_ray_node_ip: str = Field(
        default="127.0.0.1",
        description="The local stack's Ray node address. Loopback (default): a one-machine Ray whose listeners "
        "that follow the node address are on loopback, Ray's dashboard, autoscaler and agent Prometheus servers "
        "included; no other machine can join it. This machine's IP: other nodes can `ray start --address` to "
        "it, and those three Prometheus servers listen on every interface without authentication.",
    )
    stack_start_timeout_s: int = Field(
        default=900, ge=10, description="The local stack: how long to wait for each service to start."
    )

    @field_validator("stack_ray_node_ip")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        ipaddress.ip_address(
            value
        )  # its ValueError ("does not appear to be an IPv4 or IPv6 address") is the message
        return value


# ---------------------------------------------------------------------------------------- monitoring
class MonitoringConfig(_Section):
    enabled: bool = Field(
        default=True, description="Whether the service records what it serves (bertops.monitoring)."
    )
    sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of served texts recorded (1 = all, up to max_records_per_hour).",
    )
    max_records_per_hour: int = Field(
        default=100_000,
        ge=0,
        description="Cap on recorded texts per replica and clock hour; the rest are not sampled.",
    )
    store_text: bool = Field(
        default=True,
        description="Keep the raw text in the records; false keeps derived features only (length, [UNK] count), "
        "and the embedding check is then skipped.",
    )
    store_uri: str = Field(
        default="monitoring",
        description="Where records, feedback and reports go: a path (relative: under project.state_dir) or a "
        "filesystem URI pyarrow opens (s3://bucket/prefix on a cluster).",
    )
    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Requests (their sampled texts) waiting for the writer; when full, new ones are dropped and "
        "counted.",
    )
    segment_records: int = Field(
        default=1_000, ge=1, description="Records per Parquet segment before it rotates."
    )
    flush_interval_s: float = Field(
        default=60, gt=0, description="A segment is written at least this often while records arrive."
    )
    window_hours: float = Field(default=24, gt=0, description="The recent window the drift check compares.")
    min_samples: int = Field(
        default=100,
        ge=1,
        description="Fewest recorded texts in the window before drift may trigger a retrain.",
    )
    reference_samples: int = Field(
        default=500, ge=10, description="Texts drawn from the champion's training data as the reference."
    )
    reference_split: Literal["train", "validation"] = Field(
        default="validation",
        description="Which split of the champion's data is the reference: validation (held out, so the "
        "champion's confidence on it is what it is on new in-domain text) or train (over-confident there).",
    )
    significance: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="A check drifts when its two-sample test's p-value is below this.",
    )
    drift_threshold: float = Field(
        default=0.4,
        gt=0,
        le=1,
        description="Drift score (share of the checks that drift) at or above which bert_monitor emits the "
        "bertops_drift Asset.",
    )
    permutations: int = Field(default=200, ge=10, description="Permutations of the embedding MMD test.")
    schedule: str = Field(default="@hourly", description="Airflow schedule of the bert_monitor DAG.")
    experiment: str = Field(
        default="bertops-monitoring", description="MLflow experiment of the drift reports."
    )


class ProjectConfig(_Section):
    name: str = Field(default="bertops", description="Project name.")
    seed: int = Field(default=42, description="Seed of model initialisation and training.")
    deterministic: bool = Field(
        default=False,
        description="Bit-identical training runs on the same machine and thread counts: TensorFlow op "
        "determinism (seeds and data order are always fixed); its cost is in docs/training.md.",
    )
    state_dir: str = Field(
        default=".bertops",
        description="Local state of the embedded stack (MLflow DB, Ray/Airflow homes, credentials); git-ignored.",
    )
    data_dir: str = Field(default="data", description="Root of the DVC-tracked data.")


class BertopsConfig(_Section):
    """The whole ``params.yaml``: one section per stage."""

    project: ProjectConfig = Field(default=ProjectConfig(), description="Names, seed and local paths.")
    ingest: IngestConfig = Field(default=IngestConfig(), description="Stage ingest: raw sources to records.")
    validate_data: ValidateConfig = Field(
        default_factory=ValidateConfig, alias="validate", description="Stage validate: data checks."
    )
    split: SplitConfig = Field(default=SplitConfig(), description="Stage split: train/validation/test.")
    vocab: VocabConfig = Field(default=VocabConfig(), description="Stage vocab: the WordPiece vocabulary.")
    pretrain_data: PretrainDataConfig = Field(
        default=PretrainDataConfig(), description="Stage pretrain_data: masked-LM / NSP instances."
    )
    finetune_data: FinetuneDataConfig = Field(
        default=FinetuneDataConfig(), description="Stage finetune_data: tokenised task examples."
    )
    model: ModelConfig = Field(default=ModelConfig(), description="The BERT architecture.")
    pretrain: PretrainConfig = Field(default=PretrainConfig(), description="Pretraining on Ray Train.")
    finetune: FinetuneConfig = Field(default=FinetuneConfig(), description="Fine-tuning on Ray Train.")
    tracking: TrackingConfig = Field(default=TrackingConfig(), description="MLflow tracking.")
    evaluation: EvaluationConfig = Field(default=EvaluationConfig(), description="Evaluation of a candidate.")
    registry: RegistryConfig = Field(default=RegistryConfig(), description="MLflow registered model names.")
    promotion: PromotionConfig = Field(default=PromotionConfig(), description="The promotion gate.")
    serving: ServingConfig = Field(default=ServingConfig(), description="Ray Serve deployment.")
    orchestration: OrchestrationConfig = Field(
        default=OrchestrationConfig(), description="Airflow and the local stack."
    )
    monitoring: MonitoringConfig = Field(
        default=MonitoringConfig(), description="What the service records, and the drift check on it."
    )

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> BertopsConfig:
        limit = self.model.max_sequence_length
        for key, value in (
            ("pretrain_data.max_seq_length", self.pretrain_data.max_seq_length),
            ("finetune_data.max_seq_length", self.finetune_data.max_seq_length),
        ):
            if value > limit:
                raise ValueError(
                    f"{key}={value} is above the model's position limit model.max_sequence_length={limit}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, with the YAML key names (``validate``, not ``validate_data``)."""
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, str]:
        """``{"finetune.learning_rate": "0.0001", ...}``: the form MLflow params take."""
        out: dict[str, str] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(node) if isinstance(node, list | dict) else str(node)

        walk("", self.to_dict())
        return out

    # -- paths derived from the config, so that no directory name is repeated across modules
    @property
    def state_dir(self) -> Path:
        return Path(self.project.state_dir)

    def model_name_for(self, task: str) -> str:
        """The registered model of ``task``: ``registry.ner_model_name`` for NER, else ``registry.model_name``."""
        return self.registry.ner_model_name if task == "ner" else self.registry.model_name

    def feedback_file(self, task: str) -> Path | None:
        """Where the feedback of ``task``'s registered model is exported and ingested from (None: off).

        One folder per model, so that labels given to one model (and its label set) never reach another's data.
        """
        if self.ingest.feedback_dir is None:
            return None
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_name_for(task))
        return Path(self.ingest.feedback_dir) / folder / f"{task}.jsonl"

    def tracking_uri(self) -> str:
        """Resolved MLflow tracking URI: config, then ``MLFLOW_TRACKING_URI``, then the local stack's server while
        it runs (as ``docker`` finds its context), then the embedded SQLite store."""
        if self.tracking.uri:
            return self.tracking.uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        running = running_stack_url(self.state_dir, "mlflow")
        if running:
            return running
        return f"sqlite:///{(self.state_dir / 'mlflow' / 'mlflow.db').resolve()}"

    def ray_address(self, scaling: ScalingSettings | None = None) -> str | None:
        """Resolved Ray address: config, then ``RAY_ADDRESS``, else None (start a local Ray)."""
        s = scaling or self.finetune.scaling
        return s.address or os.environ.get("RAY_ADDRESS") or None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        key = key.replace("validate_data", "validate")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md for the allowed keys)"
        elif e["type"] == "literal_error":
            msg = f"{msg}; got {e.get('input')!r}"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"finetune.epochs=3"`` -> (["finetune", "epochs"], 3). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to raw config data (before validation)."""
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def running_stack_url(state_dir: Path, service: str) -> str | None:
    """The URL of ``service`` of the local stack whose state is ``state_dir`` (``stack.json``), when its process
    is alive; None without a running stack."""
    try:
        svc = json.loads((state_dir / "stack.json").read_text(encoding="utf-8"))["services"][service]
        os.kill(int(svc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = svc.get("url")
    return str(url) if url else None


def load_raw(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def validate_config(data: dict[str, Any], source: str = "<config>") -> BertopsConfig:
    try:
        return BertopsConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> BertopsConfig:
    """Load, override and validate ``params.yaml``. Raises :class:`ConfigError` naming each bad key."""
    data = apply_overrides(load_raw(path), overrides)
    return validate_config(data, str(path))


def describe_config() -> str:
    """Every key of ``params.yaml`` with its type, default and description, as a Markdown reference."""
    from pydantic.fields import FieldInfo

    lines: list[str] = []

    def walk(model: type[BaseModel], instance: BaseModel, prefix: str, about: str | None = None) -> None:
        rows: list[tuple[str, str, str, str]] = []
        nested: list[tuple[str, type[BaseModel], BaseModel, str | None]] = []
        for name, field in model.model_fields.items():
            assert isinstance(field, FieldInfo)
            key = field.alias or name
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                nested.append((f"{prefix}{key}", type(value), value, field.description))
                continue
            typ = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            rows.append((f"{prefix}{key}", typ, json.dumps(value), field.description or ""))
        if rows:
            lines.append(f"\n### `{prefix.rstrip('.') or 'top level'}`\n")
            if about:
                lines.append(about + "\n")
            if model.__doc__:
                lines.append(" ".join(model.__doc__.split()) + "\n")
            lines.append("| key | type | default | meaning |\n|---|---|---|---|")
            esc = lambda text: text.replace("|", "\\|")  # noqa: E731 - a pipe would end the table cell
            lines.extend(f"| `{k}` | `{esc(t)}` | `{esc(d)}` | {esc(m)} |" for k, t, d, m in rows)
        for key, sub, inst, sub_about in nested:
            walk(sub, inst, f"{key}.", sub_about)

    walk(BertopsConfig, BertopsConfig(), "")
    return "\n".join(lines) + "\n"
