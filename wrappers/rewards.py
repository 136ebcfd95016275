"""Reward wrappers: process rewards from a PRM, outcome rewards from a judger, penalties, and plain functions.

Each is a ``gymnasium.Wrapper`` that records its constructor arguments (``gymnasium.utils.RecordConstructorArgs``),
so it shows up in ``env.spec.additional_wrappers`` and ``gym.make(env.spec)`` rebuilds the same stack. The
arguments are recorded by reference, not deep-copied: a rebuilt env shares the same PRM / judger object (a PRM
holds a model that must not be copied per env). They read
the step protocol of ``reasoning_gym`` envs: ``info["problem"]`` (question text), ``info["steps"]`` (steps so far),
``info["invalid"]``, and, from trusted code only, ``env.unwrapped.problem.answer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import gymnasium as gym
from gymnasium.utils import RecordConstructorArgs

from rewards.prm.base import AGGREGATIONS, ProcessRewardModel, aggregate_scores
from rewards.protocols import OutcomeJudger

__all__ = ["FunctionReward", "LengthPenalty", "OutcomeReward", "PRMReward", "StepPenalty"]

StepReward = Literal["score", "delta", "none"]


class PRMReward(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """Per-step rewards from a process reward model, optionally combined with the env's outcome reward.

    ``reward = outcome_weight * env_reward + prm_weight * (per_step + terminal)`` where

    - ``per_step`` is, for each step that added text, ``"score"``: the PRM score of the new step; ``"delta"``:
      the change in PRM score since the previous step (potential-based shaping, Ng et al. 1999; the first step is
      compared with ``initial_score``); ``"none"``: 0.
    - ``terminal`` is, at the end of the episode, the ``aggregate`` ("min", "last", "product", "mean") of all
      step scores, or 0 when ``aggregate`` is None.

    ``info["prm_score"]`` (latest step) and ``info["prm_scores"]`` (all steps) are added.
    """

    def __init__(
        self,
        env: gym.Env[str, str],
        prm: ProcessRewardModel,
        *,
        per_step: StepReward = "score",
        aggregate: str | None = None,
        prm_weight: float = 1.0,
        outcome_weight: float = 1.0,
        initial_score: float = 0.5,
    ) -> None:
        if per_step not in ("score", "delta", "none"):
            raise ValueError(f"per_step must be 'score', 'delta' or 'none', got {per_step!r}")
        if aggregate is not None and aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be None or one of {AGGREGATIONS}, got {aggregate!r}")
        RecordConstructorArgs.__init__(
            self,
            _disable_deepcopy=True,
            prm=prm,
            per_step=per_step,
            aggregate=aggregate,
            prm_weight=prm_weight,
            outcome_weight=outcome_weight,
            initial_score=initial_score,
        )
        gym.Wrapper.__init__(self, env)
        self.prm = prm
        self.per_step = per_step
        self.aggregate = aggregate
        self.prm_weight = float(prm_weight)
        self.outcome_weight = float(outcome_weight)
        self.initial_score = float(initial_score)
        self._scores: list[float] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._scores = []
        return self.env.reset(seed=seed, options=options)

    def get_wrapper_state(self) -> list[float]:
        """The step scores so far (planners rewind them with the env: ``wrappers.state``)."""
        return list(self._scores)

    def set_wrapper_state(self, state: list[float]) -> None:
        self._scores = list(state)

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        steps = list(info.get("steps", []))
        shaped = 0.0
        if len(steps) > len(self._scores):
            previous = self._scores[-1] if self._scores else self.initial_score
            self._scores = [float(s) for s in self.prm.score([info["problem"]], [steps])[0]]
            if self.per_step == "score":
                shaped = self._scores[-1]
            elif self.per_step == "delta":
                shaped = self._scores[-1] - previous
        if (terminated or truncated) and self.aggregate is not None:
            shaped += aggregate_scores(self._scores, self.aggregate)
        info = dict(info)
        info["prm_score"] = self._scores[-1] if self._scores else None
        info["prm_scores"] = list(self._scores)
        return (
            obs,
            self.outcome_weight * float(reward) + self.prm_weight * shaped,
            terminated,
            truncated,
            info,
        )


class OutcomeReward(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """Replace the env's reward by an outcome reward: ``correct_reward`` / ``incorrect_reward`` when the episode
    terminates, ``unfinished_reward`` when it is truncated without an answer, 0 before.

    With ``judger`` (e.g. ``rewards.MathJudger()`` or an ``LLMJudge``) the steps joined by the env's delimiter are
    judged against ``env.unwrapped.problem.answer``; without one the env's own verdict (``info["is_success"]``) is
    used. Sets ``info["is_success"]`` (and its alias ``info["correct"]``) to the verdict.
    """

    def __init__(
        self,
        env: gym.Env[str, str],
        judger: OutcomeJudger | None = None,
        *,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        unfinished_reward: float | None = None,
    ) -> None:
        RecordConstructorArgs.__init__(
            self,
            _disable_deepcopy=True,
            judger=judger,
            correct_reward=correct_reward,
            incorrect_reward=incorrect_reward,
            unfinished_reward=unfinished_reward,
        )
        gym.Wrapper.__init__(self, env)
        self.judger = judger
        self.correct_reward = float(correct_reward)
        self.incorrect_reward = float(incorrect_reward)
        self.unfinished_reward = float(incorrect_reward if unfinished_reward is None else unfinished_reward)

    def _verdict(self, info: dict[str, Any]) -> bool:
        if self.judger is None:
            return bool(info.get("is_success", False))
        delimiter = getattr(self.env.unwrapped, "step_delimiter", "\n\n")
        reference = self.env.unwrapped.problem.answer
        return bool(self.judger.judge(delimiter.join(info.get("steps", [])), reference))

    def step(self, action: str):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward = 0.0
        if terminated:
            info = dict(info)
            info["is_success"] = info["correct"] = self._verdict(info)
            reward = self.correct_reward if info["is_success"] else self.incorrect_reward
        elif truncated:
            reward = self.unfinished_reward
        return obs, reward, terminated, truncated, info


class StepPenalty(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """Subtract ``penalty`` on every step (shorter solutions win ties) and ``invalid_penalty`` on invalid steps."""

    def __init__(
        self, env: gym.Env[str, str], penalty: float = 0.01, *, invalid_penalty: float = 0.0
    ) -> None:
        RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, penalty=penalty, invalid_penalty=invalid_penalty
        )
        gym.Wrapper.__init__(self, env)
        self.penalty = float(penalty)
        self.invalid_penalty = float(invalid_penalty)

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward) - self.penalty - (self.invalid_penalty if info.get("invalid") else 0.0)
        return obs, reward, terminated, truncated, info


class LengthPenalty(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """Subtract ``coef * max(0, length - free)`` per step, the step's length counted in ``unit``:
    ``"chars"``, ``"words"`` or ``"tokens"`` (needs ``tokenizer``)."""

    def __init__(
        self,
        env: gym.Env[str, str],
        coef: float = 0.001,
        *,
        unit: Literal["chars", "words", "tokens"] = "chars",
        free: int = 0,
        tokenizer: Any = None,
    ) -> None:
        if unit not in ("chars", "words", "tokens"):
            raise ValueError(f"unit must be 'chars', 'words' or 'tokens', got {unit!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("unit='tokens' needs a tokenizer")
        RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, coef=coef, unit=unit, free=free, tokenizer=tokenizer
        )
        gym.Wrapper.__init__(self, env)
        self.coef = float(coef)
        self.unit = unit
        self.free = int(free)
        self.tokenizer = tokenizer

    def length(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        if self.unit == "words":
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        text = action if isinstance(action, str) else str(action)
        penalty = self.coef * max(0, self.length(text) - self.free)
        return obs, float(reward) - penalty, terminated, truncated, info


RewardFn = Callable[[Any, Sequence[str], dict[str, Any]], float]


class FunctionReward(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """A custom reward from a plain function ``fn(problem, steps, info) -> float`` called after every step.

    ``problem`` is ``env.unwrapped.problem`` (a ``reasoning_gym.data.Problem``, reference answer included: the
    function is trusted code), ``steps`` the steps so far, ``info`` the step's info. ``mode="add"`` adds
    ``weight * fn(...)`` to the env's reward, ``mode="replace"`` uses it instead. Example::

        def boxed_bonus(problem, steps, info):
            return 0.1 if steps and "\\\\boxed{" in steps[-1] else 0.0

        env = FunctionReward(gym.make("openr/Arithmetic-v0"), boxed_bonus)
    """

    def __init__(
        self,
        env: gym.Env[str, str],
        fn: RewardFn,
        *,
        mode: Literal["add", "replace"] = "add",
        weight: float = 1.0,
    ) -> None:
        if mode not in ("add", "replace"):
            raise ValueError(f"mode must be 'add' or 'replace', got {mode!r}")
        if not callable(fn):
            raise TypeError("fn must be callable as fn(problem, steps, info) -> float")
        RecordConstructorArgs.__init__(self, _disable_deepcopy=True, fn=fn, mode=mode, weight=weight)
        gym.Wrapper.__init__(self, env)
        self.fn = fn
        self.mode = mode
        self.weight = float(weight)

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        problem = getattr(self.env.unwrapped, "problem", None)
        value = self.weight * float(self.fn(problem, list(info.get("steps", [])), info))
        reward = value if self.mode == "replace" else float(reward) + value
        return obs, reward, terminated, truncated, info
