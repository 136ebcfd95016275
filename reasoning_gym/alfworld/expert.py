"""Scripted experts for ALFWorld: the fast-downward planner and ALFWorld's own hand-coded TextWorld expert.

Why two: the planner knows the whole world and gives the shortest plan from any state (after ``set_state`` too),
which is what search tests and demonstrations for training want; the hand-coded expert (``alfworld`` 0.4.2's
``HandCodedTWAgent``, the one ALFWorld uses for DAgger) explores receptacles like a person and only knows what it has
seen, so its trajectories look like real play (it solves the shared real game in 16 steps). Both act through the
public env, and the hand-coded one is seeded without touching the global ``random`` state.
"""

from __future__ import annotations

import random
from typing import Any

import gymnasium as gym

from reasoning_gym.alfworld.engine import base_env

__all__ = ["HandcodedExpert", "run_expert"]


def _unwrapped(env: Any) -> Any:
    return env.unwrapped if isinstance(env, gym.Env) else env


class HandcodedExpert:
    """ALFWorld's hand-coded expert, fed the env's facts and feedback (like ``alfworld``'s ``AlfredExpert``)."""

    def __init__(self, seed: int = 0, max_steps: int = 200) -> None:
        self.max_steps = max_steps
        self._rng_state = random.Random(seed).getstate()
        self._agent: Any = None
        self._next = "look"

    def _with_rng(self, fn: Any, *args: Any) -> Any:
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            return fn(*args)
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    def reset(self, env: Any) -> str:
        """Start following a freshly reset env; returns the first command."""
        from alfworld.agents.expert import HandCodedTWAgent

        game = _unwrapped(env)
        self._agent = HandCodedTWAgent(max_steps=self.max_steps)
        self._agent.reset(str(game.game_file))
        self._agent.observe(game.raw_feedback)
        self._next = "look"
        return self._next

    def step(self, env: Any, command: str) -> str:
        """Tell the expert which command was just played; returns its next command."""
        from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout

        game = _unwrapped(env)
        base = base_env(game.textworld_env)
        admissible = game._admissible
        state = {
            "feedback": game.raw_feedback,
            "facts": [base._get_human_readable_fact(f) for f in base._pddl_state.facts],
            "admissible_commands": admissible,
            "won": game._won,
        }
        try:
            action = self._with_rng(self._agent.act, state, 0, state["won"], command)
        except (HandCodedAgentFailed, HandCodedAgentTimeout):
            action = "look"
        self._next = action if action in admissible else "look"
        return self._next

    @property
    def next_action(self) -> str:
        return self._next


def run_expert(env: Any, expert: str = "planner", max_steps: int = 60, seed: int = 0) -> dict[str, Any]:
    """Play one episode of an already reset env (wrappers respected) with a scripted expert.

    Returns the commands played, ``won`` and the number of steps. The planner re-plans only if the world leaves its
    plan (it never does in ALFWorld, which is deterministic).
    """
    game = _unwrapped(env)
    commands: list[str] = []
    won, over = game._won, False

    def play(command: str) -> None:
        nonlocal won, over
        _, _, terminated, truncated, info = env.step(command)
        commands.append(command)
        won, over = bool(info["won"]), terminated or truncated or len(commands) >= max_steps

    if expert == "planner":
        while not won and not over:
            plan = game.expert_plan()
            if not plan:
                break
            for command in plan:
                play(command)
                if won or over:
                    break
    elif expert == "handcoded":
        follower = HandcodedExpert(seed=seed)
        command = follower.reset(game)
        while not won and not over:
            play(command)
            command = follower.step(game, command)
    else:
        raise ValueError(f"expert must be 'planner' or 'handcoded', got {expert!r}")
    return {"commands": commands, "won": won, "steps": len(commands)}
