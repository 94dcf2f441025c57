"""Where the engine computes: the device a name asks for, and the precision it computes in there."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available to this torch build "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). oneDNN also runs bf16 on
    AVX-512 CPUs without either, by emulation, measured 2.8 times slower than float32 there."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 where it is fast and safe (no loss scaling needed), else None for float32."""
    if precision == "fp32" or device.type == "mps":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if native_cpu_bf16() else None
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """How the ``start`` event and training.json name the precision a run computes in."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"
