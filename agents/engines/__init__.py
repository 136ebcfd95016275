"""LLM engines: one batched interface over transformers, vLLM, OpenAI-compatible servers and Ray engine actors.

Heavy backends (torch, transformers, vllm, ray) load on first attribute access, so ``import agents.engines`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Completion, Engine, FinishReason, GenerationStats, Prompt, StepPrompter

__all__ = [
    "DEFAULT_MODEL",
    "Completion",
    "Engine",
    "FinishReason",
    "GenerationStats",
    "HFEngine",
    "OpenAIEngine",
    "Prompt",
    "RayEngine",
    "StepPrompter",
    "VLLMEngine",
    "load_model",
    "load_tokenizer",
]

_LAZY = {
    "HFEngine": ".hf",
    "VLLMEngine": ".vllm_engine",
    "OpenAIEngine": ".openai_engine",
    "RayEngine": ".ray_engine",
    "load_model": ".models",
    "load_tokenizer": ".models",
    "DEFAULT_MODEL": ".models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
