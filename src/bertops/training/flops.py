"""Model FLOPs utilisation (MFU): achieved training FLOPs over the accelerator's peak.

Training FLOPs per token follow the PaLM appendix: ``6 * N`` for the weights (forward + backward) plus
``12 * L * H * S`` for the attention scores and mixing. ``N`` counts all parameters, embeddings included
(PaLM leaves them out), so the figure runs slightly high for tiny models with large vocabularies. Peak figures are dense (no sparsity) per device.
The training loop counts real (non-padding) tokens, with ``S`` the step's bucketed length: FLOPs spent on
padding are not model FLOPs, so padding shows as a lower figure.
"""

from __future__ import annotations

# device name fragment -> (peak dense FLOP/s at 16-bit, peak at float32 (TF32 where the tensor cores do it))
GPU_PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "L4": (121e12, 60e12),
    "A10": (125e12, 62e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def train_flops_per_token(num_params: int, num_layers: int, hidden_dim: int, seq_len: int) -> float:
    """``6 N + 12 L H S``: forward + backward FLOPs per trained token."""
    return 6.0 * num_params + 12.0 * num_layers * hidden_dim * seq_len


def peak_flops(device_name: str, dtype_policy: str) -> float | None:
    """The peak of a GPU by (a fragment of) its name, for the compute dtype; None if unknown."""
    for fragment, (half, full) in GPU_PEAK_FLOPS.items():
        if fragment.lower() in device_name.lower():
            return half if dtype_policy.startswith("mixed") else full
    return None


def mfu(model_flops_per_s: float, num_devices: int, peak_per_device: float) -> float:
    """Share of the devices' peak the run achieves (0..1), from the achieved model FLOP/s of all devices."""
    return model_flops_per_s / (num_devices * peak_per_device)
