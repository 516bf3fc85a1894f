"""The one typed configuration of bertops, loaded from ``params.yaml``.

Every stage reads its own section; the whole resolved config is logged with every run.
Validation happens once, here, and errors name the key and what was allowed::

    from bertops.config import load_config
    cfg = load_config("params.yaml", overrides=["finetune.learning_rate=3e-5"])
    cfg.finetune.learning_rate

Nothing happens at import time: no files are read, no directories created.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    source: str = Field(description="builtin:news | builtin:rotten_tomatoes | builtin:wnut16 | a path or glob")
    format: Literal["auto", "csv", "jsonl", "parquet", "text", "conll"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # Optional extra columns whose text is prepended to the document text (e.g. a news title).
    title_column: str | None = None
    # Row filter for CSV-like sources: rows whose label_column value is listed here are dropped.
    exclude_labels: list[str] = Field(default_factory=list)
    # Rename raw labels to the canonical ones, e.g. {fresh: positive, rotten: negative}.
    label_mapping: dict[str, str] = Field(default_factory=dict)
    # Cap on the number of rows/documents read (None = all): small configs for tests and demos.
    max_records: int | None = Field(default=None, ge=1)
    encoding: str = "utf-8"


class IngestConfig(_Section):
    corpus: SourceConfig = SourceConfig(source="builtin:news", title_column="title")
    classification: SourceConfig = SourceConfig(
        source="builtin:rotten_tomatoes",
        label_column="category",
        exclude_labels=["plot"],
        label_mapping={"fresh": "positive", "rotten": "negative"},
    )
    ner: SourceConfig = SourceConfig(source="builtin:wnut16", format="conll")
    # Empty / whitespace-only texts are always reported; dropping them instead of failing is a choice.
    drop_empty: bool = False
    # Sentence splitting of the unlabelled corpus.
    min_sentence_chars: int = Field(default=1, ge=1)


class ValidateConfig(_Section):
    # The canonical label set of the classification data; a label outside it is an error.
    labels: list[str] = Field(default_factory=lambda: ["negative", "positive"], min_length=2)
    # The classification data fails when the rarest class is below this share of rows.
    min_class_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    # Duplicate texts (same text, same label) are reported; above this share of rows they are an error.
    max_duplicate_fraction: float = Field(default=0.2, ge=0, le=1)
    max_text_chars: int = Field(default=100_000, ge=1)


class SplitConfig(_Section):
    seed: int = 13
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # Share of corpus documents held out to measure pretraining (masked-LM / NSP) quality.
    corpus_heldout_fraction: float = Field(default=0.02, ge=0, lt=0.5)


class VocabConfig(_Section):
    # Train a WordPiece vocabulary on the corpus, or adopt a given vocab.txt (e.g. a checkpoint's).
    vocab_file: str | None = None
    vocab_size: int = Field(default=8000, ge=1)
    min_frequency: int = Field(default=2, ge=1)
    lowercase: bool = True
    strip_accents: bool = True
    max_input_chars_per_word: int = Field(default=100, ge=1)
    limit_alphabet: int = Field(default=1000, ge=1)


class PretrainDataConfig(_Section):
    max_seq_length: int = Field(default=128, ge=8)
    short_seq_prob: float = Field(default=0.1, ge=0, le=1)
    masked_lm_prob: float = Field(default=0.15, gt=0, lt=1)
    max_predictions_per_seq: int = Field(default=20, ge=1)
    dupe_factor: int = Field(default=5, ge=1)
    whole_word_masking: bool = False
    seed: int = 12345
    # Parallelism: documents are streamed into this many worker processes; each writes its own shards.
    num_workers: int = Field(default=2, ge=1)
    # Instances per shard (bounds memory: a worker holds at most one shard of instances at a time).
    shard_size: int = Field(default=10_000, ge=1)


class FinetuneDataConfig(_Section):
    max_seq_length: int = Field(default=128, ge=8)


# ---------------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """Architecture. ``preset`` picks a named size; any field set here overrides the preset."""

    preset: Literal["tiny", "mini", "small", "medium", "base", "large", "custom"] = "tiny"
    num_layers: int | None = Field(default=None, ge=1)
    hidden_dim: int | None = Field(default=None, ge=1)
    num_heads: int | None = Field(default=None, ge=1)
    intermediate_dim: int | None = Field(default=None, ge=1)
    max_sequence_length: int = Field(default=512, ge=8)
    type_vocab_size: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    dtype_policy: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"

    @model_validator(mode="after")
    def _custom_needs_sizes(self) -> ModelConfig:
        if self.preset == "custom":
            missing = [k for k in ("num_layers", "hidden_dim", "num_heads") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"preset 'custom' needs model.{', model.'.join(missing)}")
        return self


# ------------------------------------------------------------------------------------------- training
class ScalingSettings(_Section):
    """How Ray Train places workers. The same code runs locally and on a cluster; only this changes."""

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=1, ge=0)
    # Ray cluster address; None means RAY_ADDRESS from the environment, else a local Ray started on demand.
    address: str | None = None
    max_failures: int = Field(default=2, ge=0)


class OptimizerConfig(_Section):
    name: Literal["adamw", "lamb"] = "adamw"
    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    beta_1: float = Field(default=0.9, gt=0, lt=1)
    beta_2: float = Field(default=0.999, gt=0, lt=1)
    epsilon: float = Field(default=1e-6, gt=0)
    clip_norm: float = Field(default=1.0, gt=0)
    gradient_accumulation_steps: int = Field(default=1, ge=1)


class PretrainConfig(_Section):
    batch_size: int = Field(default=32, ge=1, description="per worker; global = batch_size x num_workers")
    max_steps: int = Field(default=2000, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-4)
    checkpoint_every_steps: int = Field(default=500, ge=1)
    eval_every_steps: int = Field(default=500, ge=1)
    eval_batches: int = Field(default=20, ge=1)
    log_every_steps: int = Field(default=50, ge=1)
    jit_compile: bool = False
    scaling: ScalingSettings = ScalingSettings()
    # Where the pretraining bundle (model.keras = BertPretrainer, vocab.txt, bertops.json) is written.
    output_dir: str = "artifacts/pretrain"
    # Ray Train run name; starting a run under the name of an interrupted one resumes it from its latest
    # checkpoint. None: "pretrain-<UTC time>" (a fresh run each time).
    run_name: str | None = None
    checkpoints_to_keep: int = Field(default=2, ge=1)


class FinetuneConfig(_Section):
    task: Literal["classification", "ner"] = "classification"
    # scratch | pretrained (bertops' own pretraining output) | hf:<dir> | google:<dir> | a bertops model dir
    init: str = "pretrained"
    batch_size: int = Field(default=32, ge=1, description="per worker; global = batch_size x num_workers")
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    # The fine-tuning peak learning rate; it takes precedence over finetune.optimizer.learning_rate.
    learning_rate: float = Field(default=1e-4, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    early_stopping_patience: int = Field(default=2, ge=0)
    class_weights: Literal["none", "balanced"] = "none"
    checkpoint_every_steps: int = Field(default=200, ge=1)
    log_every_steps: int = Field(default=20, ge=1)
    jit_compile: bool = False
    scaling: ScalingSettings = ScalingSettings()
    # Where the task bundle (model.keras, vocab.txt, label_map.json, bertops.json) is written.
    output_dir: str = "artifacts/finetune"
    # As pretrain.run_name: the same name resumes an interrupted run. None: "finetune-<UTC time>".
    run_name: str | None = None
    checkpoints_to_keep: int = Field(default=2, ge=1)

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        if v in ("scratch", "pretrained") or v.startswith(("hf:", "google:", "bertops:")):
            return v
        raise ValueError(
            f"finetune.init must be 'scratch', 'pretrained', 'hf:<dir>', 'google:<dir>' or 'bertops:<dir>', got {v!r}"
        )


# ---------------------------------------------------------------------------- tracking and registry
class TrackingConfig(_Section):
    # None: MLFLOW_TRACKING_URI from the environment, else the embedded default under state_dir.
    uri: str | None = None
    pretrain_experiment: str = "bertops-pretrain"
    finetune_experiment: str = "bertops-finetune"
    evaluation_experiment: str = "bertops-evaluation"


class EvaluationConfig(_Section):
    # Text length buckets (in word pieces) for sliced metrics: [0,32), [32,64), [64,inf).
    length_buckets: list[int] = Field(default_factory=lambda: [32, 64])
    calibration_bins: int = Field(default=10, ge=2)
    worst_examples: int = Field(default=25, ge=0)
    latency_repeats: int = Field(default=20, ge=1)
    output_dir: str = "artifacts/evaluation"


class RegistryConfig(_Section):
    model_name: str = "bert-sentiment"
    ner_model_name: str = "bert-ner"


class PromotionConfig(_Section):
    metric: str = "accuracy"
    min_absolute: float = Field(default=0.6, ge=0)
    min_improvement: float = Field(default=0.0)
    # Largest allowed drop, versus the champion, of any per-class F1 or length-slice accuracy.
    max_regression: float = Field(default=0.05, ge=0)
    max_latency_ms: float = Field(default=200.0, gt=0, description="p50 batch-1 inference latency")
    require_approval: bool = False
    approval_timeout_s: float = Field(default=3600, gt=0)
    mode: Literal["auto", "require_approval", "never"] = "auto"


# ---------------------------------------------------------------------------------------------- serving
class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"
    num_replicas: int | Literal["auto"] = 1
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=16, gt=0)
    num_cpus_per_replica: float = Field(default=1, gt=0)
    num_gpus_per_replica: float = Field(default=0, ge=0)
    # Dynamic batching: up to max_batch_size *texts* per model call, gathered for at most batch_wait_timeout_s.
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    # Requests in flight per replica (Ray Serve max_ongoing_requests); None = 2 x max_batch_size.
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_texts_per_request: int = Field(default=64, ge=1)
    max_text_bytes: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    poll_interval_s: float = Field(default=30, gt=0)
    model_alias: str = "champion"


# ---------------------------------------------------------------------------------------- orchestration
class OrchestrationConfig(_Section):
    data_schedule: str = "@daily"
    retrain_schedule: str = "@weekly"
    airflow_url: str = "http://127.0.0.1:8080"
    ray_dashboard_url: str = "http://127.0.0.1:8265"
    dvc_pool: str = "dvc"
    task_retries: int = Field(default=2, ge=0)
    retry_delay_s: int = Field(default=30, ge=0)
    ray_job_timeout_s: int = Field(default=3600, ge=1)
    # How Ray jobs start: the interpreter and the directory on the Ray head that holds this checkout.
    # None = this machine's venv python and this checkout (the local stack); set both for a remote cluster.
    job_python: str | None = None
    job_workdir: str | None = None
    # The local stack (`bertops stack up`): CPUs the Ray head offers, and how long to wait for each service.
    stack_ray_cpus: int = Field(default=2, ge=1)
    # Ray's default object store is 30% of RAM, set up at start; the pipeline needs little of it.
    stack_ray_object_store_mb: int = Field(default=512, ge=78)
    stack_start_timeout_s: int = Field(default=900, ge=10)


class ProjectConfig(_Section):
    name: str = "bertops"
    seed: int = 42
    # Local state of the embedded stack (MLflow DB, Ray/Airflow homes, credentials); git-ignored.
    state_dir: str = ".bertops"
    data_dir: str = "data"


class BertopsConfig(_Section):
    """The whole ``params.yaml``: one section per stage."""

    project: ProjectConfig = ProjectConfig()
    ingest: IngestConfig = IngestConfig()
    validate_data: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = SplitConfig()
    vocab: VocabConfig = VocabConfig()
    pretrain_data: PretrainDataConfig = PretrainDataConfig()
    finetune_data: FinetuneDataConfig = FinetuneDataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    serving: ServingConfig = ServingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

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

    def tracking_uri(self) -> str:
        """Resolved MLflow tracking URI: config, then ``MLFLOW_TRACKING_URI``, then the embedded SQLite store."""
        if self.tracking.uri:
            return self.tracking.uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
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

    def walk(model: type[BaseModel], instance: BaseModel, prefix: str) -> None:
        rows: list[tuple[str, str, str, str]] = []
        nested: list[tuple[str, type[BaseModel], BaseModel]] = []
        for name, field in model.model_fields.items():
            assert isinstance(field, FieldInfo)
            key = field.alias or name
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                nested.append((f"{prefix}{key}", type(value), value))
                continue
            typ = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            rows.append((f"{prefix}{key}", typ, json.dumps(value), field.description or ""))
        if rows:
            lines.append(f"\n### `{prefix.rstrip('.') or 'top level'}`\n")
            if model.__doc__:
                lines.append(" ".join(model.__doc__.split()) + "\n")
            lines.append("| key | type | default | meaning |\n|---|---|---|---|")
            esc = lambda text: text.replace("|", "\\|")  # noqa: E731 - a pipe would end the table cell
            lines.extend(f"| `{k}` | `{esc(t)}` | `{esc(d)}` | {esc(m)} |" for k, t, d, m in rows)
        for key, sub, inst in nested:
            walk(sub, inst, f"{key}.")

    walk(BertopsConfig, BertopsConfig(), "")
    return "\n".join(lines) + "\n"
