"""What this machine runs fast: the one place where dtype and autocast choices follow the device and the CPU.

Why: machines of the same kind differ. On a CPU with AVX512-BF16 / AMX, bf16 halves memory traffic and is ~2x
faster; on an AVX2-only CPU torch falls back to a scalar bf16 GEMM and one forward + backward of SmolLM2-135M took
230 s under bf16 autocast against 7.2 s in fp32 (notes/machine-facts.md). On CUDA, ``torch.cuda.is_bf16_supported()``
counts emulated bf16 (pre-Ampere GPUs) unless asked not to. So "bf16 or not" is decided here, per device, and every
benchmark records what it ran on (:func:`hardware_info`), since a number means little without the CPU it came from.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Literal

import torch

__all__ = [
    "AutocastSetting",
    "autocast_context",
    "autocast_dtype",
    "bf16_is_fast",
    "cpu_capability",
    "device_of",
    "engine_dtype",
    "hardware_info",
]

AutocastSetting = Literal["auto", "bf16", "off"]
"""``"auto"``: bf16 autocast only where the device runs bf16 fast (:func:`bf16_is_fast`), else none (fp32);
``"bf16"``: always; ``"off"``: never. (No fp16: training in fp16 needs a gradient scaler, which the trainers lack.)"""


def cpu_capability() -> str:
    """torch's CPU kernel level: "AVX512", "AVX2", "DEFAULT" (ARM: "SVE256", "NO AVX", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch
        return "unknown"


def _cpu_bf16_is_fast() -> bool:
    """oneDNN has native bf16 kernels here (AVX512-BF16, AMX, or ARM BF16), not torch's scalar fallback."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cuda_bf16_is_fast(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere and later); emulated bf16 on older GPUs does not count."""
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 compute on ``device`` is native (fast), so bf16 weights or autocast are worth using."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_bf16_is_fast(device)
    if device.type == "cpu":
        return _cpu_bf16_is_fast()
    return False


def autocast_dtype(setting: AutocastSetting | bool, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for a trainer's ``autocast`` setting on ``device``; None means no autocast (fp32).

    ``True`` / ``False`` are the old boolean spelling of ``"bf16"`` / ``"off"``.
    """
    if setting is True:
        setting = "bf16"
    elif setting is False:
        setting = "off"
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else None
    raise ValueError(f"autocast must be 'auto', 'bf16' or 'off', got {setting!r}")


def device_of(model: Any) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def engine_dtype(engine: Any) -> torch.dtype | None:
    """The dtype an engine computes in: its model's (transformers), or the one it was started with (vLLM)."""
    model = getattr(engine, "model", None)
    if model is not None and hasattr(model, "parameters"):
        return next(model.parameters()).dtype
    return getattr(engine, "dtype", None)


def autocast_context(setting: AutocastSetting | bool, device: torch.device | str) -> Any:
    """``torch.autocast`` on ``device``'s type with :func:`autocast_dtype`, or a no-op context."""
    import contextlib

    device = torch.device(device)
    dtype = autocast_dtype(setting, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _dtype_name(value: Any) -> Any:
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value


def hardware_info(**dtypes: Any) -> dict[str, Any]:
    """What a benchmark ran on, for its JSON: CPU capability, bf16 speed, threads, GPU, versions, and the dtypes
    passed in (``hardware_info(model_dtype=torch.bfloat16, autocast=None)``)."""
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "cpu_capability": cpu_capability(),
        "cpu_bf16_fast": _cpu_bf16_is_fast(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_bf16_fast": _cuda_bf16_is_fast(torch.device("cuda")) if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    info.update({name: _dtype_name(value) for name, value in dtypes.items()})
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
