"""LLM engines: one batched interface over transformers, vLLM and OpenAI-compatible servers.

Heavy backends (torch, transformers, vllm) load on first attribute access, so ``import agents.engines`` is cheap.
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
    "StepPrompter",
    "VLLMEngine",
    "load_model",
    "load_tokenizer",
]

_LAZY = {
    "HFEngine": ".hf",
    "VLLMEngine": ".vllm_engine",
    "OpenAIEngine": ".openai_engine",
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
