"""ALFWorld household tasks as a step-level Gymnasium env (``openr/ALFWorld-v0``), offline.

Imports are lazy: ``textworld`` / ``alfworld`` load only when an env or a generator is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ALFWorldEnv",
    "GamePool",
    "HandcodedExpert",
    "TASK_TYPES",
    "default_cache_dir",
    "enable_fast_textworld",
    "generate_game",
    "run_expert",
    "stock_textworld",
]

_EXPORTS = {
    "ALFWorldEnv": "reasoning_gym.alfworld.env",
    "GamePool": "reasoning_gym.alfworld.games",
    "default_cache_dir": "reasoning_gym.alfworld.games",
    "HandcodedExpert": "reasoning_gym.alfworld.expert",
    "run_expert": "reasoning_gym.alfworld.expert",
    "TASK_TYPES": "reasoning_gym.alfworld.generate",
    "generate_game": "reasoning_gym.alfworld.generate",
    "enable_fast_textworld": "reasoning_gym.alfworld.speedups",
    "stock_textworld": "reasoning_gym.alfworld.speedups",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
