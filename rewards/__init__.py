"""Outcome judgers and process reward models (never imports ``agents``: language models are handed in).

The judger is imported eagerly (it is light: math-verify runs in a child process); the PRMs and the LLM judge load
torch / transformers, so they are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from reasoning_gym.judging.answer import extract_answer
from reasoning_gym.judging.judge import MathJudger

__all__ = ["JudgeVerdict", "LLMJudge", "MathJudger", "ProcessRewardModel", "extract_answer", "load_prm"]

_LAZY = {
    "LLMJudge": "rewards.llm_judge",
    "JudgeVerdict": "rewards.llm_judge",
    "ProcessRewardModel": "rewards.prm",
    "load_prm": "rewards.prm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
