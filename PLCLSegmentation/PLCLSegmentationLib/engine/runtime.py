"""Where the engine computes: the device a name asks for, what runs the network there (the backend),
and the precision it computes in."""

from __future__ import annotations

import importlib.util

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
        raise ConfigError(f"--device {name}: no CUDA GPU is available to this torch build "
                          f"(torch {torch.__version__}); use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered from 0")
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


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context of a precision chosen by ``autocast_dtype``: ``dtype`` where given, off
    (float32) where None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def precision_name(dtype: torch.dtype | None) -> str:
    """How the ``start`` event and training.json name the precision a run computes in."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


#: Backends other than torch: the modules each imports (ONNX Runtime needs onnx for torch's exporter)
#: and the extra of pyproject.toml that installs them.
BACKEND_PACKAGES = {"onnxruntime": (("onnxruntime", "onnx"), "onnx"), "openvino": (("openvino",), "openvino")}
#: What ``--backend auto`` runs on a CPU: the first of these that is installed, else torch. A backend
#: is listed only when it measured at least 1.3 times faster than torch at the default precision
#: on every volume of a study, with labels within a Dice of 0.999 of torch fp32's (docs/cost-model.md).
AUTO_CPU_BACKENDS: tuple[str, ...] = ()


def missing_modules(name: str) -> list[str]:
    """The modules backend ``name`` needs that cannot be imported here."""
    missing = []
    for module in BACKEND_PACKAGES.get(name, ((),))[0]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a package that cannot be imported is as good as absent
            found = False
        if not found:
            missing.append(module)
    return missing


def backend_installed(name: str) -> bool:
    return name == "torch" or (name in BACKEND_PACKAGES and not missing_modules(name))


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend ``--backend name`` runs on ``device``: a ConfigError (one line) for one that is not
    installed or cannot run there; auto is torch except on a CPU with one of AUTO_CPU_BACKENDS."""
    if name == "auto":
        if device.type == "cpu":
            return next((b for b in AUTO_CPU_BACKENDS if backend_installed(b)), "torch")
        return "torch"
    if name == "torch":
        return name
    if name not in BACKEND_PACKAGES:
        raise ConfigError(f"--backend {name}: unknown; choose auto, torch, {', '.join(BACKEND_PACKAGES)}")
    missing = missing_modules(name)
    if missing:
        raise ConfigError(f"--backend {name}: the {missing[0]} package is not installed here; install it "
                          f"(pip install 'plcl-segmentation[{BACKEND_PACKAGES[name][1]}]') or use --backend torch")
    if device.type != "cpu":
        raise ConfigError(f"--backend {name} runs on the CPU only, not on {device}; use --device cpu "
                          "or --backend torch")
    return name


def backend_precision(backend: str, precision: str, device: torch.device) -> str:
    """The precision (fp32 or bf16) ``backend`` computes in for ``precision`` (auto, fp32, bf16) on
    ``device``. ONNX Runtime computes this network in float32 only; OpenVINO takes bfloat16 only
    where asked for, as its own default on such CPUs would change the results unasked."""
    if backend == "torch":
        return precision_name(autocast_dtype(precision, device))
    if precision == "bf16" and backend == "onnxruntime":
        raise ConfigError("--precision bf16: ONNX Runtime runs this network in fp32 only; use --precision "
                          "fp32 or auto, or --backend torch or openvino")
    return "bf16" if precision == "bf16" else "fp32"
