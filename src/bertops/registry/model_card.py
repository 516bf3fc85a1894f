"""The model card: the Markdown description a model version shows in the MLflow UI. Pure text rendering.

    card = render_model_card(ModelCardInfo(name="bert-sentiment", version="3", task="classification", ...))
    client.update_model_version(name, version, description=card)

Sections: summary (task, labels, data version, lineage), training configuration, evaluation metrics next to the
current champion's, the promotion gate's result and reasons, limitations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Metrics shown in the card's table, in this order (the MLflow run holds every metric).
CARD_METRICS = (
    "accuracy",
    "macro_f1",
    "roc_auc",
    "log_loss",
    "ece",
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "token_accuracy",
    "all_o_entity_f1",
    "latency_p50_ms_batch1",
    "latency_p50_ms_batch32",
)
CARD_PREFIXES = ("f1_", "slice_")
MAX_DESCRIPTION_CHARS = 60_000

LIMITATIONS = (
    "- Trained and evaluated on the data version named above only; other domains (tweets, legal text, other "
    "languages) are untested and likely worse.\n"
    "- Texts longer than the model's `max_seq_length` word pieces are truncated: only their beginning is read.\n"
    "- Probabilities are calibrated only as far as the ECE above says; do not read them as exact risks.\n"
    "- Labels are limited to the label map; anything else (neutral, mixed) is forced into one of them."
)


@dataclass
class ModelCardInfo:
    """Everything a card shows; every field is optional except the identity."""

    name: str
    version: str
    task: str = "classification"
    labels: list[str] = field(default_factory=list)
    data_version: str | None = None
    git_commit: str | None = None
    training_run_id: str | None = None
    ray_job_id: str | None = None
    airflow_run_id: str | None = None
    training_config: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    champion_version: str | None = None
    champion_metrics: Mapping[str, float] | None = None
    gate_status: str | None = None
    gate_reasons: list[str] = field(default_factory=list)
    evaluation_run_id: str | None = None
    overrides: str | None = None  # JSON list, as tagged
    dvc_experiment: str | None = None
    trained: Mapping[str, Any] | None = (
        None  # the training run's bertops.trained record (bertops.model.lineage)
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _metric_rows(metrics: Mapping[str, float], champion: Mapping[str, float] | None) -> list[str]:
    keys = [k for k in CARD_METRICS if k in metrics]
    keys += sorted(k for k in metrics if k.startswith(CARD_PREFIXES) and not k.endswith("_n"))
    rows = []
    for key in keys:
        cand = metrics.get(key)
        if champion is None:
            rows.append(f"| {key} | {_fmt(cand)} |")
        else:
            base = champion.get(key)
            delta = "—" if cand is None or base is None else f"{cand - base:+.4f}"
            rows.append(f"| {key} | {_fmt(cand)} | {_fmt(base)} | {delta} |")
    return rows


def render_model_card(info: ModelCardInfo) -> str:
    """The Markdown model card of one version."""
    lines = [
        f"# {info.name} v{info.version}",
        "",
        f"**Task:** {info.task}"
        + (f" — labels: {', '.join(f'`{x}`' for x in info.labels)}" if info.labels else ""),
        "",
        "## Lineage",
        f"- Data version (DVC): `{info.data_version or 'unknown'}`",
        f"- Git commit: `{info.git_commit or 'unknown'}`",
        f"- Training run: `{info.training_run_id or 'unknown'}`",
        f"- Ray job: `{info.ray_job_id or 'none'}`",
        f"- Airflow run: `{info.airflow_run_id or 'none'}`",
    ]
    if info.evaluation_run_id:
        lines.append(f"- Evaluation run: `{info.evaluation_run_id}`")
    if info.dvc_experiment:
        lines.append(f"- DVC experiment: `{info.dvc_experiment}`")
    if info.overrides:
        lines.append(f"- Overrides: `{info.overrides}`")
    lines += ["", "## What was trained", ""]
    if info.trained:
        t = info.trained
        tok = t.get("tokenizer") or {}
        lines += [
            f"- Architecture: {t.get('architecture')} (read back from the trained bundle)",
            f"- Initialised from: `{t.get('init')}`"
            + (f", content sha256 `{t['init_sha256']}`" if t.get("init_sha256") else ""),
            "- Tokenizer: "
            + ", ".join(f"{k} `{tok[k]}`" for k in ("lowercase", "strip_accents", "max_seq_length",
                                                    "max_input_chars_per_word", "vocab_sha256") if k in tok),
        ]  # fmt: skip
    else:
        lines.append("Not recorded (a training run before bertops recorded it, or none linked).")
    if info.training_config:
        lines += ["", "## Training configuration", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(info.training_config.items())]
    lines += ["", "## Evaluation (held-out test split)", ""]
    if not info.metrics:
        lines.append("Not evaluated yet: run `bertops evaluate` / the promotion gate.")
    elif info.champion_metrics is None:
        lines += ["No champion to compare with (first model).", "", "| metric | this version |", "|---|---|"]
        lines += _metric_rows(info.metrics, None)
    else:
        lines += [
            f"| metric | this version | champion v{info.champion_version} | change |",
            "|---|---|---|---|",
        ]
        lines += _metric_rows(info.metrics, info.champion_metrics)
    lines += ["", "## Promotion gate", ""]
    if info.gate_status is None:
        lines.append("Not run yet.")
    else:
        lines.append(f"**Result: {info.gate_status}**")
        lines += [""] + [f"- {r}" for r in info.gate_reasons]
    lines += ["", "## Limitations", "", LIMITATIONS, ""]
    text = "\n".join(lines)
    return (
        text
        if len(text) <= MAX_DESCRIPTION_CHARS
        else text[: MAX_DESCRIPTION_CHARS - 20] + "\n\n(truncated)\n"
    )
