"""The parameters of a ``bert_retrain`` run: ONE JSON schema, used by the DAG and by ``bertops retrain``.

The DAG turns :data:`RETRAIN_PARAMS` into Airflow ``Param``s (Airflow validates a triggered run's ``conf`` against
them); the CLI validates the same ``conf`` with :func:`validate_conf` before sending it, so both sides refuse the
same bad input. A valid ``conf`` then becomes ``params.yaml`` overrides (:func:`conf_to_overrides`), and the
resolved config is validated once more by :func:`bertops.config.load_config`, which names any bad key.

    conf = conf_from_sets(["finetune.learning_rate=3e-5", "finetune.epochs=3"])
    validate_conf(conf)                  # raises RetrainParamsError naming the field
    conf_to_overrides(conf)              # ["finetune.learning_rate=3e-05", "finetune.epochs=3", ...]
"""

from __future__ import annotations

import contextlib
from typing import Any

from bertops.config import ConfigError, parse_override

PRESETS = ["tiny", "mini", "small", "medium", "base", "large", "custom"]

# name -> (JSON schema of the value, the params.yaml keys it sets, description). ``None`` as a value (the default
# of most) means "keep what params.yaml says". Keys are listed once here and nowhere else.
RETRAIN_PARAMS: dict[str, dict[str, Any]] = {
    "task": {
        "schema": {"type": ["string", "null"], "enum": ["classification", "ner", None]},
        "keys": ["finetune.task"],
        "description": "Fine-tuning task: classification (sentiment) or ner.",
    },
    "model_size": {
        "schema": {"type": ["string", "null"], "enum": [*PRESETS, None]},
        "keys": ["model.preset"],
        "description": "Model size preset (tiny 2/128/2 ... large 24/1024/16).",
    },
    "init_checkpoint": {
        "schema": {"type": ["string", "null"], "pattern": "^(scratch|pretrained|(hf|google|bertops):.+)$"},
        "keys": ["finetune.init"],
        "description": "Initial weights: scratch, pretrained (bertops' own), hf:<dir>, google:<dir>, bertops:<dir>.",
    },
    "learning_rate": {
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "keys": ["finetune.learning_rate"],
        "description": "Fine-tuning peak learning rate.",
    },
    "epochs": {
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
        "keys": ["finetune.epochs"],
        "description": "Fine-tuning epochs.",
    },
    "max_steps": {
        "schema": {"type": ["integer", "null"], "minimum": 1},
        "keys": ["finetune.max_steps"],
        "description": "Cap on fine-tuning steps (small runs, demos).",
    },
    "workers": {
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 512},
        "keys": ["pretrain.scaling.num_workers", "finetune.scaling.num_workers"],
        "description": "Ray Train workers for pretraining and fine-tuning.",
    },
    "use_gpu": {
        "schema": {"type": ["boolean", "null"]},
        "keys": ["pretrain.scaling.use_gpu", "finetune.scaling.use_gpu"],
        "description": "One GPU per Ray Train worker.",
    },
    "promotion": {
        "schema": {"type": ["string", "null"], "enum": ["auto", "require_approval", "never", None]},
        "keys": ["promotion.mode"],
        "description": "auto: promote when the gate passes; require_approval: wait for a reviewer; never.",
    },
}

# Not config keys: how the run behaves.
RUN_PARAMS: dict[str, dict[str, Any]] = {
    "pretraining": {
        "schema": {"type": "string", "enum": ["auto", "always", "skip"]},
        "default": "auto",
        "description": "auto: pretrain only when the corpus changed (or no pretrained model exists); "
        "always; skip (fine-tune from the configured init).",
    },
    "overrides": {
        "schema": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*=.*$"}},
        "default": [],
        "description": "Any other params.yaml overrides, as section.key=value strings.",
    },
}

# The params.yaml key -> the named parameter that carries it (for ``--set`` on the CLI).
_KEY_TO_PARAM = {key: name for name, spec in RETRAIN_PARAMS.items() for key in spec["keys"]}
_KEY_TO_PARAM["finetune.optimizer.learning_rate"] = "learning_rate"


class RetrainParamsError(ValueError):
    """A retrain ``conf`` that does not match the schema; the message names the parameter."""


def conf_schema() -> dict[str, Any]:
    """The JSON schema of a whole ``bert_retrain`` ``conf`` object."""
    props: dict[str, Any] = {name: dict(spec["schema"]) for name, spec in RETRAIN_PARAMS.items()}
    props.update({name: dict(spec["schema"]) for name, spec in RUN_PARAMS.items()})
    return {"type": "object", "properties": props, "additionalProperties": False}


def default_conf() -> dict[str, Any]:
    """Every parameter at its default (``None``: keep params.yaml)."""
    conf: dict[str, Any] = dict.fromkeys(RETRAIN_PARAMS)
    conf.update({name: spec["default"] for name, spec in RUN_PARAMS.items()})
    return conf


def validate_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """Check ``conf`` against :func:`conf_schema` (and each override's form); return it with defaults filled.

    Raises :class:`RetrainParamsError` naming the parameter and what was allowed.
    """
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(conf_schema()).iter_errors(conf), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.path) or "<conf>"
            lines.append(f"  - {where}: {err.message}")
        raise RetrainParamsError("invalid bert_retrain parameters:\n" + "\n".join(lines))
    full = default_conf()
    full.update(conf)
    for text in full["overrides"]:
        try:
            parse_override(text)
        except ConfigError as exc:
            raise RetrainParamsError(f"invalid bert_retrain parameters:\n  - overrides: {exc}") from None
    return full


def conf_to_overrides(conf: dict[str, Any]) -> list[str]:
    """The ``params.yaml`` overrides a (validated) ``conf`` stands for; named parameters first."""
    out: list[str] = []
    for name, spec in RETRAIN_PARAMS.items():
        value = conf.get(name)
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.extend(f"{key}={text}" for key in spec["keys"])
        if name == "learning_rate":
            out.append(f"finetune.optimizer.learning_rate={text}")
    out.extend(conf.get("overrides") or [])
    return out


def conf_from_sets(sets: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn CLI ``--set key=value`` strings into a ``conf``: known keys become named parameters, the rest overrides.

    Values are parsed as YAML (``3e-5`` is a number, ``true`` a boolean), as ``bertops --set`` does everywhere.
    """
    conf: dict[str, Any] = dict(base or {})
    extra: list[str] = list(conf.get("overrides") or [])
    for text in sets:
        try:
            parts, value = parse_override(text)
        except ConfigError as exc:
            raise RetrainParamsError(str(exc)) from None
        key = ".".join(parts)
        name = _KEY_TO_PARAM.get(key)
        if name is None:
            extra.append(text)
            continue
        if isinstance(value, str) and name in ("learning_rate",):
            # YAML 1.1 reads "3e-5" as a string; accept it as the number it means.
            with contextlib.suppress(ValueError):
                value = float(value)
        conf[name] = value
    if extra:
        conf["overrides"] = extra
    return conf


def airflow_params() -> dict[str, Any]:
    """The DAG's ``params``: one Airflow ``Param`` per parameter, with the schema above."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for name, spec in RETRAIN_PARAMS.items():
        params[name] = Param(None, description=spec["description"], schema=spec["schema"])
    for name, spec in RUN_PARAMS.items():
        params[name] = Param(spec["default"], description=spec["description"], schema=spec["schema"])
    return params
