"""Checkpoint import: HF safetensors and Google TF layouts, parity against independent references, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.model.conftest import SENTENCES
from tests.model.numpy_bert import bert_forward, gelu, layer_norm

PARITY_ATOL = 1e-4
REFERENCE_SCRIPT = Path(__file__).with_name("torch_reference.py")


def _encode(minilm_dir: Path, texts: list[str], length: int) -> dict[str, np.ndarray]:
    from bertops.data.tokenizer import encode_texts, load_tokenizer

    return encode_texts(load_tokenizer(minilm_dir / "vocab.txt"), texts, length)


def _sequence_output(backbone, batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(backbone(batch, training=False)["sequence_output"])


def tiny_hf_weights(config: dict, seed: int = 0, heads: bool = True) -> dict[str, np.ndarray]:
    """A random BERT state dict with Hugging Face names and layouts (Linear weights (out, in))."""
    rng = np.random.default_rng(seed)
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(v, h),
        "embeddings.position_embeddings.weight": r(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": r(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
        "pooler.dense.weight": r(h, h),
        "pooler.dense.bias": r(h),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}"
        for part in ("query", "key", "value"):
            w[f"{p}.attention.self.{part}.weight"] = r(h, h)
            w[f"{p}.attention.self.{part}.bias"] = r(h)
        w.update({
            f"{p}.attention.output.dense.weight": r(h, h), f"{p}.attention.output.dense.bias": r(h),
            f"{p}.attention.output.LayerNorm.weight": 1 + r(h), f"{p}.attention.output.LayerNorm.bias": r(h),
            f"{p}.intermediate.dense.weight": r(i, h), f"{p}.intermediate.dense.bias": r(i),
            f"{p}.output.dense.weight": r(h, i), f"{p}.output.dense.bias": r(h),
            f"{p}.output.LayerNorm.weight": 1 + r(h), f"{p}.output.LayerNorm.bias": r(h),
        })  # fmt: skip
    if heads:
        w.update({
            "cls.predictions.transform.dense.weight": r(h, h), "cls.predictions.transform.dense.bias": r(h),
            "cls.predictions.transform.LayerNorm.weight": 1 + r(h), "cls.predictions.transform.LayerNorm.bias": r(h),
            "cls.predictions.bias": r(v),
            "cls.seq_relationship.weight": r(2, h), "cls.seq_relationship.bias": r(2),
        })  # fmt: skip
    return w


TINY_CONFIG = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 24, "max_position_embeddings": 32, "type_vocab_size": 2,
               "hidden_act": "gelu", "layer_norm_eps": 1e-12}  # fmt: skip


def write_hf(directory: Path, weights: dict[str, np.ndarray], config: dict, prefix: str = "bert.") -> Path:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    names = {(k if k.startswith("cls.") else prefix + k): v for k, v in weights.items()}
    names["bert.embeddings.position_ids"] = np.arange(config["max_position_embeddings"])[None]
    save_file(names, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_google(
    directory: Path, weights: dict[str, np.ndarray], config: dict, extra_slots: bool = True
) -> Path:
    """Write a real TF1 checkpoint in Google's BERT layout with ``tf.compat.v1.train.Saver``."""
    import tensorflow as tf

    from bertops.model.checkpoints import hf_to_google_name

    directory.mkdir(parents=True, exist_ok=True)
    values = {}
    for name, value in weights.items():
        if name == "embeddings.position_ids":
            continue
        # Google's kernels are (in, out); torch Linear weights are (out, in). output_weights of NSP stays (2, H).
        is_linear = name.endswith(".weight") and "embeddings" not in name and "LayerNorm" not in name
        if is_linear and name != "cls.seq_relationship.weight":
            value = value.T
        values[hf_to_google_name(name)] = value
    if extra_slots:  # what a real pretraining checkpoint also holds, and an import must skip
        values["global_step"] = np.array(1000, dtype=np.int64)
        values["bert/embeddings/word_embeddings/adam_m"] = np.zeros_like(
            values["bert/embeddings/word_embeddings"]
        )
    # The TF1 Saver keys variables by the names given here, exactly as google-research/bert's checkpoints.
    saver = tf.compat.v1.train.Saver(var_list={n: tf.Variable(v) for n, v in values.items()})
    saver.save(None, str(directory / "bert_model.ckpt"), write_meta_graph=False)
    cfg = {k: v for k, v in config.items() if k != "layer_norm_eps"}  # Google's configs have no eps key
    (directory / "bert_config.json").write_text(json.dumps(cfg))
    return directory


# ------------------------------------------------------------------------------------------- MiniLM (HF)
def test_minilm_import_reports_what_it_loaded(minilm_import) -> None:
    r = minilm_import
    assert (
        r.architecture.num_layers == 6 and r.architecture.hidden_dim == 384 and r.architecture.num_heads == 12
    )
    assert r.pretrainer is None and "cls (pretraining heads)" in r.absent_optional
    assert "embeddings.position_ids" in r.ignored
    assert len(r.loaded) == 5 + 6 * 16 + 2  # embeddings + 16 tensors a layer + pooler
    assert r.vocab_file is not None and r.lowercase is True


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_minilm_matches_numpy_reference(
    minilm_import, minilm_weights, minilm_config, minilm_dir, padded
) -> None:
    if padded:  # one batch, shorter sentences padded to 32
        batches = [_encode(minilm_dir, SENTENCES, 32)]
    else:  # each sentence alone at its exact length: no padding at all
        batches = []
        for s in SENTENCES:
            b = _encode(minilm_dir, [s], 64)
            n = int(b["padding_mask"].sum())
            batches.append({k: v[:, :n] for k, v in b.items()})
            assert b["padding_mask"][:, :n].all()
    for batch in batches:
        ours = _sequence_output(minilm_import.backbone, batch)
        ref, _ = bert_forward(
            minilm_weights, minilm_config, batch["token_ids"], batch["segment_ids"], batch["padding_mask"]
        )
        real = batch["padding_mask"].astype(bool)
        assert np.abs(ours - ref)[real].max() < PARITY_ATOL
        assert np.abs(ours - ref).max() < PARITY_ATOL


def _reference_python() -> str | None:
    candidate = os.environ.get("BERTOPS_REFERENCE_PYTHON", "/tmp/refvenv/bin/python")
    if not Path(candidate).exists():
        return None
    probe = subprocess.run([candidate, "-c", "import torch, transformers"], capture_output=True)
    return candidate if probe.returncode == 0 else None


def test_minilm_matches_transformers_reference(minilm_import, minilm_dir, tmp_path) -> None:
    """Optional: HF ``transformers`` on PyTorch in a separate venv (BERTOPS_REFERENCE_PYTHON)."""
    python = _reference_python()
    if python is None:
        pytest.skip(
            "no python with torch + transformers (set BERTOPS_REFERENCE_PYTHON, e.g. /tmp/refvenv/bin/python)"
        )
    batch = _encode(minilm_dir, SENTENCES, 32)
    np.savez(tmp_path / "in.npz", **batch)
    subprocess.run(
        [python, str(REFERENCE_SCRIPT), str(minilm_dir), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        timeout=300,
    )
    ref = np.load(tmp_path / "out.npz")
    ours = minilm_import.backbone(batch, training=False)
    assert np.abs(np.asarray(ours["sequence_output"]) - ref["sequence_output"]).max() < PARITY_ATOL
    assert np.abs(np.asarray(ours["pooled_output"]) - ref["pooled_output"]).max() < PARITY_ATOL


# ------------------------------------------------------------------------------------------- Google layout
def test_google_checkpoint_from_minilm_matches(minilm_weights, minilm_config, minilm_dir, tmp_path) -> None:
    from bertops.model.checkpoints import import_checkpoint

    directory = write_google(tmp_path / "uncased_minilm", minilm_weights, minilm_config)
    shutil.copy(minilm_dir / "vocab.txt", directory / "vocab.txt")
    result = import_checkpoint(f"google:{directory}")
    assert "global_step" in result.ignored and "bert/embeddings/word_embeddings/adam_m" in result.ignored
    batch = _encode(minilm_dir, SENTENCES, 32)
    ref, pooled = bert_forward(
        minilm_weights, minilm_config, batch["token_ids"], batch["segment_ids"], batch["padding_mask"]
    )
    out = result.backbone(batch, training=False)
    assert np.abs(np.asarray(out["sequence_output"]) - ref).max() < PARITY_ATOL
    assert np.abs(np.asarray(out["pooled_output"]) - pooled).max() < PARITY_ATOL


@pytest.mark.parametrize("layout", ["hf", "google"])
def test_pretraining_heads_import(tmp_path, layout) -> None:
    """Masked-LM (tied decoder + bias) and NSP heads land in BertPretrainer, checked against NumPy."""
    from bertops.model.checkpoints import import_checkpoint

    weights = tiny_hf_weights(TINY_CONFIG)
    write = write_hf if layout == "hf" else write_google
    directory = write(tmp_path / "ckpt", weights, TINY_CONFIG)
    result = import_checkpoint(f"{layout}:{directory}")
    assert result.pretrainer is not None
    rng = np.random.default_rng(1)
    batch = {
        "token_ids": rng.integers(0, 40, (2, 10)).astype("int32"),
        "segment_ids": np.array([[0] * 5 + [1] * 5] * 2, "int32"),
        "padding_mask": np.array([[1] * 10, [1] * 7 + [0] * 3], "int32"),
        "masked_lm_positions": np.array([[1, 4, 8], [0, 2, 6]], "int32"),
    }
    out = result.pretrainer(batch, training=False)
    seq, pooled = bert_forward(
        weights, TINY_CONFIG, batch["token_ids"], batch["segment_ids"], batch["padding_mask"]
    )
    x = np.take_along_axis(seq, batch["masked_lm_positions"][..., None], axis=1)
    x = gelu(
        x @ weights["cls.predictions.transform.dense.weight"].T
        + weights["cls.predictions.transform.dense.bias"]
    )
    x = layer_norm(
        x,
        weights["cls.predictions.transform.LayerNorm.weight"],
        weights["cls.predictions.transform.LayerNorm.bias"],
        1e-12,
    )
    mlm = x @ weights["embeddings.word_embeddings.weight"].T + weights["cls.predictions.bias"]
    nsp = pooled @ weights["cls.seq_relationship.weight"].T + weights["cls.seq_relationship.bias"]
    assert np.abs(np.asarray(out["mlm_logits"]) - mlm).max() < 1e-3
    assert np.abs(np.asarray(out["nsp_logits"]) - nsp).max() < 1e-4


# ------------------------------------------------------------------------------------------- bad checkpoints
@pytest.mark.parametrize("layout", ["hf", "google"])
def test_wrong_shape_names_the_variable(tmp_path, layout) -> None:
    from bertops.model.checkpoints import CheckpointError, import_checkpoint

    weights = tiny_hf_weights(TINY_CONFIG)
    weights["encoder.layer.1.output.dense.weight"] = weights["encoder.layer.1.output.dense.weight"][:, :-1]
    write = write_hf if layout == "hf" else write_google
    directory = write(tmp_path / "bad", weights, TINY_CONFIG)
    expected = (
        "bert.encoder.layer.1.output.dense.weight"
        if layout == "hf"
        else "bert/encoder/layer_1/output/dense/kernel"
    )
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")) as err:
        import_checkpoint(f"{layout}:{directory}")
    assert "shape" in str(err.value)


@pytest.mark.parametrize("layout", ["hf", "google"])
def test_missing_variable_names_the_variable(tmp_path, layout) -> None:
    from bertops.model.checkpoints import CheckpointError, import_checkpoint

    weights = tiny_hf_weights(TINY_CONFIG)
    del weights["encoder.layer.0.attention.self.key.bias"]
    write = write_hf if layout == "hf" else write_google
    directory = write(tmp_path / "bad", weights, TINY_CONFIG)
    expected = (
        "bert.encoder.layer.0.attention.self.key.bias"
        if layout == "hf"
        else "bert/encoder/layer_0/attention/self/key/bias"
    )
    with pytest.raises(CheckpointError, match=f"{expected.replace('.', '[.]')}.*missing"):
        import_checkpoint(f"{layout}:{directory}")


def test_config_with_fewer_layers_than_weights_is_refused(tmp_path) -> None:
    from bertops.model.checkpoints import CheckpointError, import_checkpoint

    directory = write_hf(
        tmp_path / "bad", tiny_hf_weights(TINY_CONFIG), {**TINY_CONFIG, "num_hidden_layers": 1}
    )
    with pytest.raises(CheckpointError, match="more than num_hidden_layers=1"):
        import_checkpoint(f"hf:{directory}")


def test_bad_spec_and_missing_files(tmp_path) -> None:
    from bertops.model.checkpoints import CheckpointError, import_checkpoint

    with pytest.raises(CheckpointError, match="hf:<dir>"):
        import_checkpoint("torch:/x")
    with pytest.raises(CheckpointError, match=r"config\.json does not exist"):
        import_checkpoint(f"hf:{tmp_path}")
    (tmp_path / "bert_config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt\.index does not exist"):
        import_checkpoint(f"google:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        import_checkpoint(f"hf:{tmp_path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_convert_command_writes_a_pretraining_bundle(tmp_path) -> None:
    from typer.testing import CliRunner

    from bertops.cli import app
    from bertops.model.bundle import load_bundle

    weights = tiny_hf_weights(TINY_CONFIG)
    directory = write_hf(tmp_path / "ckpt", weights, TINY_CONFIG)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["convert", str(directory), str(out), "--max-seq-length", "16"])
    assert result.exit_code == 0, result.output
    assert "variables loaded" in result.output and "bert.embeddings.position_ids" in result.output
    bundle = load_bundle(out)
    assert bundle.task == "pretraining" and type(bundle.model).__name__ == "BertPretrainer"
    np.testing.assert_array_equal(
        np.asarray(bundle.model.backbone.token_embedding.embeddings),
        weights["embeddings.word_embeddings.weight"],
    )
    bad = CliRunner().invoke(app, ["convert", str(tmp_path / "nowhere"), str(tmp_path / "b2")])
    assert bad.exit_code != 0 and not (tmp_path / "b2").exists()
