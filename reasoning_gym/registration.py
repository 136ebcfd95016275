"""Registration of the ``openr/*`` ids (kept apart so importing the package stays cheap)."""

from __future__ import annotations

import gymnasium as gym

__all__ = ["ENV_IDS", "register_envs"]

ENV_IDS = ("openr/MATH-v0", "openr/GSM8K-v0", "openr/Arithmetic-v0", "openr/ALFWorld-v0")

_SPECS = {
    "openr/MATH-v0": ("reasoning_gym.math_env:MathEnv", 20),
    "openr/GSM8K-v0": ("reasoning_gym.math_env:GSM8KEnv", 16),
    "openr/Arithmetic-v0": ("reasoning_gym.arithmetic:ArithmeticEnv", 10),
    "openr/ALFWorld-v0": ("reasoning_gym.alfworld.env:ALFWorldEnv", 50),
}


def register_envs() -> None:
    """Register every id once (idempotent, so re-imports and ``gym.make("reasoning_gym:...")`` are safe)."""
    for env_id, (entry_point, max_steps) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)
