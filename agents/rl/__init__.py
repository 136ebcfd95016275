"""Online RL agents (GRPO, PPO) and supervised warm-starts (SFT, rejection-sampling fine-tuning).

Exports are lazy so ``import agents.rl`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "GRPO": "agents.rl.grpo:GRPO",
    "GRPOConfig": "agents.rl.grpo:GRPOConfig",
    "PPO": "agents.rl.ppo:PPO",
    "PPOConfig": "agents.rl.ppo:PPOConfig",
    "SFT": "agents.rl.sft:SFT",
    "SFTConfig": "agents.rl.sft:SFTConfig",
    "SFTExample": "agents.rl.sft:SFTExample",
    "TrainConfig": "agents.rl.trainer:TrainConfig",
    "OREO": "agents.rl.oreo:OREO",
    "OREOConfig": "agents.rl.oreo:OREOConfig",
    "BaseCallback": "agents.rl.callbacks:BaseCallback",
    "CheckpointCallback": "agents.rl.callbacks:CheckpointCallback",
    "EvalCallback": "agents.rl.callbacks:EvalCallback",
    "StopTrainingOnRewardThreshold": "agents.rl.callbacks:StopTrainingOnRewardThreshold",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'agents.rl' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
