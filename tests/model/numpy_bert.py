"""An independent BERT forward pass in plain NumPy, written from the Hugging Face weight names and the
original BERT equations (not from bertops' Keras code), as the reference for checkpoint-import parity.

    weights = safetensors.numpy.load_file("model.safetensors")
    seq = bert_forward(weights, config, token_ids, segment_ids, padding_mask)   # (B, T, H) float64
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), as in BERT's reference code."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    # torch.nn.Linear layout: weight (out, in), y = x W^T + b
    return x @ w[f"{name}.weight"].astype(np.float64).T + w[f"{name}.bias"].astype(np.float64)


def bert_forward(
    weights: dict[str, np.ndarray],
    config: dict[str, Any],
    token_ids: np.ndarray,
    segment_ids: np.ndarray,
    padding_mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (sequence_output (B, T, H), pooled_output (B, H)) in float64."""
    w = {k.removeprefix("bert."): v for k, v in weights.items()}
    eps = float(config.get("layer_norm_eps", 1e-12))
    n_heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = hidden // n_heads
    batch, length = token_ids.shape

    x = (
        w["embeddings.word_embeddings.weight"][token_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
        + w["embeddings.token_type_embeddings.weight"][segment_ids]
    ).astype(np.float64)
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    # Additive attention mask over keys: 0 for tokens, -10000 for padding (BERT's original constant).
    mask = (1.0 - padding_mask.astype(np.float64))[:, None, None, :] * -10000.0

    def heads(t: np.ndarray) -> np.ndarray:  # (B, T, H) -> (B, nh, T, hd)
        return t.reshape(batch, length, n_heads, head_dim).transpose(0, 2, 1, 3)

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        q = heads(linear(x, w, f"{p}.attention.self.query"))
        k = heads(linear(x, w, f"{p}.attention.self.key"))
        v = heads(linear(x, w, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + mask
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        attn = linear(ctx, w, f"{p}.attention.output.dense")
        x = layer_norm(
            x + attn,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        ffn = linear(gelu(linear(x, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense")
        x = layer_norm(x + ffn, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps)
    pooled = np.tanh(linear(x[:, 0], w, "pooler.dense"))
    return x, pooled
