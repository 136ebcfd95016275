"""The ``Agent`` base class every agent shares (search and RL), in the spirit of Stable-Baselines3.

Why a base class: the benchmark, the trainers and the docs talk to every agent the same way —
``Agent(engine, env, config)``, ``predict(obs, info)`` for the next step, ``solve(env)`` for one episode,
``learn(...)`` for trainable agents, ``save(path)`` / ``Agent.load(path, engine, env)``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agents.adapters import StepAdapter, adapter_for

__all__ = ["Agent", "AgentConfig", "episode_result", "set_global_seed"]

DEFAULT_MAX_STEPS = 10


@dataclass
class AgentConfig:
    """Fields every agent has; subclasses add their own fields (every field documented)."""

    seed: int = 0
    """Seeds python, numpy, torch and the engine's sampling; same seed on CPU gives the same rollouts."""
    max_steps: int | None = None
    """Steps per episode; None uses the env's ``max_episode_steps`` (or 10)."""
    max_new_tokens: int = 256
    """Token limit for one step."""
    temperature: float = 0.7
    """Sampling temperature for steps (0 is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""


def set_global_seed(seed: int) -> None:
    """Seed python, numpy and (when it is importable) torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # torch is optional for scripted engines
        return
    torch.manual_seed(seed)


def episode_result(
    *,
    steps: Sequence[str],
    answer: str | None,
    correct: bool,
    reward: float,
    generated_tokens: int,
    prompt_tokens: int,
    engine_calls: int,
    **extra: Any,
) -> dict[str, Any]:
    """The dict ``solve`` returns (CONTRACTS.md): fixed keys first, agent-specific extras after."""
    return {
        "steps": list(steps),
        "answer": answer,
        "correct": bool(correct),
        "reward": float(reward),
        "generated_tokens": int(generated_tokens),
        "prompt_tokens": int(prompt_tokens),
        "engine_calls": int(engine_calls),
        **extra,
    }


def outcome_of(info: Mapping[str, Any]) -> bool:
    """Whether a finished episode succeeded: SB3's ``info["is_success"]``, which every ``openr/*`` env reports
    (``correct`` / ``won`` are its aliases)."""
    return bool(info.get("is_success", False))


class Agent:
    """Base agent: an engine, an (optional default) env, and a config dataclass.

    Subclasses implement ``predict`` (and usually override ``solve`` / ``solve_many`` with batched search);
    trainable agents implement ``learn`` and extend ``_save_state`` / ``_load_state`` with their weights.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig

    def __init__(
        self, engine: Any, env: Any = None, config: AgentConfig | None = None, **overrides: Any
    ) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.engine = engine
        self.env = env
        set_global_seed(self.config.seed)

    # --- acting -------------------------------------------------------------------------------------------------

    def adapter(self, env: Any) -> StepAdapter:
        """The prompt adapter for ``env`` (override to customise prompts)."""
        return adapter_for(env)

    def max_steps(self, env: Any) -> int:
        if self.config.max_steps is not None:
            return int(self.config.max_steps)
        spec = getattr(env, "spec", None)
        limit = getattr(spec, "max_episode_steps", None)
        return int(limit) if limit else DEFAULT_MAX_STEPS

    def predict(self, obs: str, info: Mapping[str, Any] | None = None) -> str:
        """The next step (action) for observation ``obs``; ``info`` carries the structured parts."""
        raise NotImplementedError

    def solve(
        self, env: Any = None, options: Mapping[str, Any] | None = None, seed: int | None = None
    ) -> dict:
        """Play one episode with ``predict`` and return ``episode_result(...)``."""
        env = self._env(env)
        before = self.engine.stats.snapshot()
        obs, info = env.reset(seed=seed, options=dict(options) if options else None)
        total_reward, steps = 0.0, []
        for _ in range(self.max_steps(env)):
            action = self.predict(obs, info)
            obs, reward, terminated, truncated, info = env.step(action)
            total_reward += float(reward)
            steps.append(action)
            if terminated or truncated:
                break
        after = self.engine.stats.snapshot()
        return episode_result(
            steps=steps,
            answer=info.get("answer"),
            correct=outcome_of(info),
            reward=total_reward,
            generated_tokens=after["generated_tokens"] - before["generated_tokens"],
            prompt_tokens=after["prompt_tokens"] - before["prompt_tokens"],
            engine_calls=after["calls"] - before["calls"],
        )

    def solve_many(self, env: Any = None, problems: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
        """Solve several problems (each a reset ``options`` dict); batched agents override this."""
        return [self.solve(env, options=options) for options in problems]

    def learn(self, total_steps: int, callback: Any = None) -> Agent:
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def _env(self, env: Any) -> Any:
        env = env if env is not None else self.env
        if env is None:
            raise ValueError(
                f"{type(self).__name__} needs an env: pass one to the constructor or to this call"
            )
        return env

    # --- persistence --------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``agent.json`` (class and config) into directory ``path``, plus whatever ``_save_state`` adds."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"class": type(self).__name__, "config": dataclasses.asdict(self.config)}
        (folder / "agent.json").write_text(json.dumps(record, indent=2))
        self._save_state(folder)
        return folder

    @classmethod
    def load(cls, path: str | Path, engine: Any, env: Any = None, **overrides: Any) -> Agent:
        """Rebuild an agent saved with ``save``; ``overrides`` replace config fields."""
        folder = Path(path)
        record = json.loads((folder / "agent.json").read_text())
        if record.get("class") != cls.__name__:
            raise ValueError(f"{folder} holds a {record.get('class')}, not a {cls.__name__}")
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        config = cls.config_class(**{k: v for k, v in record["config"].items() if k in known})
        agent = cls(engine, env, config, **overrides)
        agent._load_state(folder)
        return agent

    def _save_state(self, folder: Path) -> None:
        """Hook for subclasses with weights or other state."""

    def _load_state(self, folder: Path) -> None:
        """Hook for subclasses with weights or other state."""
