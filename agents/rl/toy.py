"""A tiny one-step task on which a tiny random model's reward must rise within seconds: a CI-sized RL check.

The reward is the fraction of the answer's characters that are digits. A random byte-level model writes a digit
about 4% of the time, so rewards differ within every GRPO group and a working policy gradient pushes that fraction
up quickly. It follows the ``openr/*`` conventions (Text spaces, ``info["problem"]`` / ``["steps"]`` /
``["instruction"]``, ``step_delimiter``) so the RL agents run on it unchanged.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium import spaces

__all__ = ["DIGITS_ID", "DigitsEnv", "register_toy_envs"]

DIGITS_ID = "openr-toy/Digits-v0"
_CHARSET = "".join(chr(c) for c in range(32, 127)) + "\n\t"


class DigitsEnv(gym.Env[str, str]):
    """One step: observation "Problem N", reward = share of digit characters in the action, ``correct`` if > 0.5."""

    metadata = {"render_modes": []}
    step_delimiter = "\n\n"
    instruction = "Write digits."

    def __init__(self) -> None:
        self.observation_space = spaces.Text(256, min_length=0, charset=_CHARSET)
        self.action_space = spaces.Text(4096, min_length=0, charset=_CHARSET)
        self.question = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.question = f"Problem {int(self.np_random.integers(100))}"
        return self.question, {"problem": self.question, "steps": [], "instruction": self.instruction}

    def step(self, action: str):
        text = str(action)
        reward = sum(c.isdigit() for c in text) / max(len(text), 1)
        info = {
            "problem": self.question,
            "steps": [text],
            "instruction": self.instruction,
            "correct": reward > 0.5,
            "is_success": reward > 0.5,
        }
        return self.question, float(reward), True, False, info


def register_toy_envs() -> None:
    """Register ``openr-toy/Digits-v0`` (idempotent)."""
    if DIGITS_ID not in gym.registry:
        gym.register(DIGITS_ID, entry_point=DigitsEnv, max_episode_steps=1)
