"""Snapshots of a whole wrapper stack, so that planners branch *through* the wrappers.

Why: search agents branch with ``get_state`` / ``set_state``. Snapshotting only ``env.unwrapped`` and stepping it
directly would bypass every wrapper (reward wrappers, ``TimeLimit``, ``TrajectoryRecorder``), so search would see
other rewards than RL does, never be truncated, and record nothing. With :func:`get_stack_state` /
:func:`set_stack_state` search steps the outermost env and every wrapper that keeps per-episode state is rewound
with the base env: ``TimeLimit``'s elapsed steps, ``RecordEpisodeStatistics``' running sums, ``PRMReward``'s step
scores, ``TrajectoryRecorder``'s episode in progress (so each finished branch is recorded as one episode).

A wrapper takes part by defining ``get_wrapper_state() -> Any`` (small, picklable; a copy) and
``set_wrapper_state(state)``. Wrappers known to keep no per-episode state (the reward wrappers of this package
besides ``PRMReward``, gymnasium's checkers and its ``RewardWrapper`` / ``ObservationWrapper`` / ``ActionWrapper``
transforms) need nothing. Any other wrapper cannot be rewound: :func:`unbranchable_wrappers` names it, and search
warns once per stack.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit

from wrappers.rewards import FunctionReward, LengthPenalty, OutcomeReward, StepPenalty

__all__ = ["get_stack_state", "set_stack_state", "unbranchable_wrappers", "wrapper_stack"]

_STATELESS: tuple[type, ...] = (
    OutcomeReward,
    StepPenalty,
    LengthPenalty,
    FunctionReward,
    OrderEnforcing,
    PassiveEnvChecker,
    gym.RewardWrapper,
    gym.ObservationWrapper,
    gym.ActionWrapper,
)
"""Wrappers whose output depends on the current step only (gymnasium's transforms by their contract)."""

_STATE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    TimeLimit: ("_elapsed_steps",),
    RecordEpisodeStatistics: ("episode_start_time", "episode_returns", "episode_lengths"),
}
"""Gymnasium wrappers that keep per-episode state in plain attributes."""


def wrapper_stack(env: Any) -> list[Any]:
    """The wrappers of ``env``, outermost first (empty for a bare env)."""
    stack = []
    while isinstance(env, gym.Wrapper):
        stack.append(env)
        env = env.env
    return stack


def _attributes(wrapper: Any) -> tuple[str, ...] | None:
    for kind, names in _STATE_ATTRIBUTES.items():
        if isinstance(wrapper, kind):
            return names
    return None


def _stateful(wrapper: Any) -> bool:
    return callable(getattr(type(wrapper), "get_wrapper_state", None)) or _attributes(wrapper) is not None


def unbranchable_wrappers(env: Any) -> list[str]:
    """Class names of the wrappers in ``env``'s stack whose state a planner cannot snapshot (see module doc)."""
    return [
        type(w).__name__ for w in wrapper_stack(env) if not _stateful(w) and not isinstance(w, _STATELESS)
    ]


def _wrapper_state(wrapper: Any) -> Any:
    if callable(getattr(type(wrapper), "get_wrapper_state", None)):
        return wrapper.get_wrapper_state()
    names = _attributes(wrapper)
    if names is None:
        return None
    return {name: copy.deepcopy(getattr(wrapper, name)) for name in names}


def _set_wrapper_state(wrapper: Any, state: Any) -> None:
    if callable(getattr(type(wrapper), "set_wrapper_state", None)):
        wrapper.set_wrapper_state(state)
        return
    if _attributes(wrapper) is not None:
        for name, value in state.items():
            setattr(wrapper, name, copy.deepcopy(value))


def get_stack_state(env: Any) -> dict[str, Any]:
    """``{"env": env.unwrapped.get_state(), "wrappers": [...]}``: one entry per wrapper, outermost first."""
    return {
        "env": env.unwrapped.get_state(),
        "wrappers": [_wrapper_state(w) for w in wrapper_stack(env)],
    }


def set_stack_state(env: Any, state: dict[str, Any]) -> None:
    """Restore a snapshot of :func:`get_stack_state` (taken on this stack or an identically wrapped one)."""
    stack = wrapper_stack(env)
    if len(stack) != len(state["wrappers"]):
        raise ValueError(
            f"the snapshot holds {len(state['wrappers'])} wrapper states but this env has {len(stack)} wrappers"
        )
    env.unwrapped.set_state(state["env"])
    for wrapper, wrapper_state in zip(stack, state["wrappers"]):
        _set_wrapper_state(wrapper, wrapper_state)
