"""BertBackbone and its heads: shapes, dtypes, padding invariance, tying, gradients, (de)serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from tests.model.conftest import TINY_VOCAB, random_batch, tiny_backbone

V = len(TINY_VOCAB)


def _task(kind: str, dtype: str = "float32"):
    from bertops.model.heads import BertClassifier, BertPretrainer, BertTokenClassifier

    backbone = tiny_backbone(dtype=dtype)
    return {
        "pretrainer": lambda: BertPretrainer(backbone),
        "classifier": lambda: BertClassifier(backbone, num_classes=3, dropout=0.0),
        "token_classifier": lambda: BertTokenClassifier(backbone, num_classes=5, dropout=0.0),
    }[kind]()


def _inputs(kind: str, batch: int = 3, length: int = 8) -> dict[str, np.ndarray]:
    x = random_batch(batch, length)
    if kind == "pretrainer":
        x["masked_lm_positions"] = np.tile(np.array([[1, 2, 0, 0]], "int32"), (batch, 1))
    return x


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_backbone_outputs_and_dtypes(dtype) -> None:
    backbone = tiny_backbone(dtype=dtype)
    out = backbone(random_batch(3, 8))
    assert set(out) == {"sequence_output", "pooled_output"}
    assert tuple(out["sequence_output"].shape) == (3, 8, 16) and tuple(out["pooled_output"].shape) == (3, 16)
    compute = "float32" if dtype == "float32" else "bfloat16"
    assert out["sequence_output"].dtype.name == compute
    assert all(w.dtype == "float32" for w in backbone.weights)  # variables stay float32 under mixed policies
    norms = [backbone.embeddings_layer_norm] + [
        n for b in backbone.transformer_layers for n in (b.attention_layer_norm, b.output_layer_norm)
    ]
    assert all(n.compute_dtype == "float32" for n in norms)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize(
    ("kind", "shapes"),
    [
        ("pretrainer", {"mlm_logits": (3, 4, V), "nsp_logits": (3, 2)}),
        ("classifier", (3, 3)),
        ("token_classifier", (3, 8, 5)),
    ],
)
def test_heads_shapes_and_float32_logits(kind, shapes, dtype) -> None:
    out = _task(kind, dtype)(_inputs(kind))
    if isinstance(shapes, dict):
        assert {k: tuple(v.shape) for k, v in out.items()} == shapes
        assert all(v.dtype.name == "float32" for v in out.values())
    else:
        assert tuple(out.shape) == shapes and out.dtype.name == "float32"
    assert np.isfinite(np.asarray(out["mlm_logits"] if kind == "pretrainer" else out)).all()


def test_padding_changes_nothing() -> None:
    """Extra [PAD] positions (whatever ids they hold) leave every real position and the pooled output unchanged."""
    backbone = tiny_backbone()
    x = random_batch(3, 8)
    rng = np.random.default_rng(3)
    padded = {k: np.concatenate([v, np.zeros((3, 5), "int32")], axis=1) for k, v in x.items()}
    padded["token_ids"][:, 8:] = rng.integers(0, V, (3, 5))  # garbage under the mask must not leak
    a, b = backbone(x), backbone(padded)
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        np.asarray(a["sequence_output"])[real], np.asarray(b["sequence_output"])[:, :8][real], atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(a["pooled_output"]), np.asarray(b["pooled_output"]), atol=1e-5)


def test_masked_lm_decoder_is_tied_to_word_embeddings() -> None:
    import tensorflow as tf

    model = _task("pretrainer")
    table = model.backbone.token_embedding.embeddings
    assert not any(tuple(w.shape) == (V, 16) for w in model.weights if w is not table)
    x = _inputs("pretrainer")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x)["mlm_logits"][..., 7])  # the logit of token 7 only
    grad = tf.convert_to_tensor(tape.gradient(loss, table))
    # Row 7 receives gradient through the decoder even when token 7 is not in the input.
    assert float(tf.norm(grad[7])) > 0
    # Changing the embedding table changes the logits exactly as a tied decoder predicts.
    before = np.asarray(model(x)["mlm_logits"])
    # (not a constant vector: LayerNorm outputs have zero mean, so a constant shift would cancel)
    table.assign_add(tf.one_hot(7, V)[:, None] * tf.random.normal((1, 16), seed=1))
    after = np.asarray(model(x)["mlm_logits"])
    changed = np.abs(after - before).max(axis=(0, 1))
    assert changed[7] > 1e-3 and changed[np.arange(V) != 7].max() < 1e-3 * changed[7] + 1e-5


@pytest.mark.parametrize("kind", ["pretrainer", "classifier", "token_classifier"])
def test_gradients_reach_every_variable(kind) -> None:
    import tensorflow as tf

    model = _task(kind)
    x = _inputs(kind)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_sum(tf.square(v)) for v in tf.nest.flatten(out))
    grads = tape.gradient(loss, model.trainable_variables)
    unused = {"pooled_dense/kernel", "pooled_dense/bias"} if kind == "token_classifier" else set()
    for var, g in zip(model.trainable_variables, grads, strict=True):
        if (
            var.path in unused
        ):  # token classification reads sequence_output only; the pooler is not on its path
            continue
        assert g is not None, f"no gradient reaches {var.path}"
        assert float(tf.norm(tf.convert_to_tensor(g))) > 0, f"zero gradient at {var.path}"


@pytest.mark.parametrize("kind", ["pretrainer", "classifier", "token_classifier"])
def test_config_round_trip(kind) -> None:
    model = _task(kind)
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    backbone_config = model.backbone.get_config()
    assert type(model.backbone).from_config(backbone_config).get_config() == backbone_config
    assert set(backbone_config) - {"name", "trainable"} == {
        "vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "dropout",
        "max_sequence_length", "num_segments", "layer_norm_epsilon", "dtype",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [("pretrainer", "float32"), ("classifier", "mixed_bfloat16"), ("token_classifier", "float32")],
)
def test_keras_file_round_trip(tmp_path, kind, dtype) -> None:
    import keras

    model = _task(kind, dtype)
    x = _inputs(kind)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model) and loaded.backbone.dtype_policy.name == dtype
    a, b = model(x), loaded(x)
    for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_classifier_first_token_path_equals_full_backbone(dtype) -> None:
    """The classifier runs the last block for [CLS] only; its logits equal the full forward pass's."""
    import keras

    model = _task("classifier", dtype)
    x = _inputs("classifier")
    pooled = keras.ops.cast(model.backbone(x)["pooled_output"], "float32")
    full = np.asarray(model.output_dense(pooled))
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.asarray(model(x)), full, atol=tol)
    assert model.backbone.encode(x, pooled_only=True).keys() == {"pooled_output"}
