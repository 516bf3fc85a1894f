"""What a run trains, stated from the things themselves: the architecture, the init checkpoint and its hash.

A fine-tune initialised from the packaged MiniLM has 6 layers and hidden size 384 whatever ``model.preset`` says,
so the plan, the training run and the model card read the architecture from where it is decided:

- before training (the retrain plan): :func:`planned_architecture`, from the init checkpoint's own config
  (``config.json``, ``bert_config.json``, a bundle's ``bertops.json``), else the ``model`` section;
- after training (the run's ``bertops.trained`` tag, the card): :func:`trained_record`, read back from the bundle
  that training wrote, with the content hash of the checkpoint it started from.

Usage::

    arch = planned_architecture(cfg.model, vocab_size=8000, init="hf:/path/to/minilm")
    describe(arch)  # "6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary 30,522, 22.7 M parameters"
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from bertops.config import ModelConfig
from bertops.model.bundle import read_meta
from bertops.model.checkpoints import HF_CONFIG, architecture_from_bert_config
from bertops.model.presets import Architecture, resolve_architecture

GOOGLE_CONFIG = "bert_config.json"


def _init_dir(init: str) -> tuple[str, Path | None]:
    """``(kind, directory)`` of an init spec: ``hf:``, ``google:``, ``bundle:`` or a bare bundle path."""
    if init in ("scratch", "pretrained"):
        return init, None
    kind, sep, rest = init.partition(":")
    if sep and kind in ("hf", "google", "bundle", "bertops"):
        return ("bundle" if kind == "bertops" else kind), Path(rest)
    return "bundle", Path(init)


def architecture_of_bundle(directory: Path) -> Architecture:
    names = {f.name for f in fields(Architecture)}
    return Architecture(**{k: v for k, v in read_meta(directory)["model"].items() if k in names})


def planned_architecture(model_cfg: ModelConfig, vocab_size: int, init: str) -> Architecture:
    """The backbone a run starting from ``init`` builds: the checkpoint's own sizes, or the ``model`` section's."""
    kind, directory = _init_dir(init)
    if directory is None:
        return resolve_architecture(model_cfg, vocab_size)
    if kind == "hf":
        config = directory / HF_CONFIG
        return architecture_from_bert_config(json.loads(config.read_text(encoding="utf-8")), config)
    if kind == "google":
        config = directory / GOOGLE_CONFIG
        return architecture_from_bert_config(json.loads(config.read_text(encoding="utf-8")), config)
    return architecture_of_bundle(directory)


def describe(arch: Architecture) -> str:
    """One line a person reads: layers, sizes, vocabulary and the backbone's parameter count."""
    return (
        f"{arch.num_layers} layers, hidden {arch.hidden_dim}, {arch.num_heads} heads, intermediate "
        f"{arch.intermediate_dim}, vocabulary {arch.vocabulary_size:,}, "
        f"{arch.num_parameters() / 1e6:.1f} M parameters"
    )


def tree_sha256(path: Path) -> str:
    """Content hash of a file or a directory tree (relative names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update((file.relative_to(path).as_posix() if file != path else file.name).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def trained_record(bundle_dir: Path, init: str) -> dict[str, Any]:
    """What a finished run trained, read back from its bundle: architecture, parameters, init and its hash,
    tokenizer settings. Stored on the training run as the ``bertops.trained`` tag (JSON)."""
    meta = read_meta(bundle_dir)
    arch = architecture_of_bundle(bundle_dir)
    _, init_path = _init_dir(init)
    record: dict[str, Any] = {
        "architecture": describe(arch),
        "num_layers": arch.num_layers,
        "hidden_dim": arch.hidden_dim,
        "num_heads": arch.num_heads,
        "intermediate_dim": arch.intermediate_dim,
        "vocabulary_size": arch.vocabulary_size,
        "max_sequence_length": arch.max_sequence_length,
        "backbone_parameters": arch.num_parameters(),
        "task": meta["task"],
        "num_classes": meta["model"].get("num_classes"),
        "init": init,
        "init_sha256": tree_sha256(init_path) if init_path is not None and init_path.exists() else None,
        "tokenizer": meta.get("tokenizer"),
    }
    return record
