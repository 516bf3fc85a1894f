"""``model.dtype_policy: auto``: bf16 only where the device has it *and* it was measured faster there."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertops.training.precision import cpu_bf16_flags, resolve_dtype_policy


def test_cpu_bf16_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_bf16_flags(info) == ("avx512_bf16", "amx_bf16")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(info) == ()
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_auto_needs_support_and_a_measured_win() -> None:
    has, lacks = ("avx512_bf16",), ()
    assert resolve_dtype_policy("auto", cpu_flags=has, measured_faster=frozenset()) == "float32"
    assert resolve_dtype_policy("auto", cpu_flags=lacks, measured_faster=frozenset({"cpu"})) == "float32"
    assert resolve_dtype_policy("auto", cpu_flags=has, measured_faster=frozenset({"cpu"})) == "mixed_bfloat16"
    assert resolve_dtype_policy("auto", on_gpu=True, measured_faster=frozenset({"gpu"})) == "mixed_bfloat16"
    assert resolve_dtype_policy("auto", on_gpu=True, measured_faster=frozenset({"cpu"})) == "float32"
    assert resolve_dtype_policy("auto") == "float32"  # nothing measured yet: float32 everywhere
    assert resolve_dtype_policy("mixed_float16") == "mixed_float16"  # an explicit policy is kept
    with pytest.raises(ValueError, match="dtype_policy"):
        resolve_dtype_policy("bf16")
