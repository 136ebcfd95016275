"""The process-reward-model interface and the ways to turn per-step scores into one number.

Why a Protocol: search agents, reward wrappers and evaluation scripts only need ``score``; any object with that
method (a trained transformer PRM, a rule, a remote service) plugs in without subclassing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

__all__ = ["AGGREGATIONS", "Aggregation", "ProcessRewardModel", "aggregate_scores"]

Aggregation = Literal["min", "last", "product", "mean"]
AGGREGATIONS: tuple[str, ...] = ("min", "last", "product", "mean")


@runtime_checkable
class ProcessRewardModel(Protocol):
    """Scores every step of many candidate solutions in one call.

    ``score(questions, step_lists)[i][j]`` is the probability-like score in [0, 1] that step ``j`` of candidate
    ``i`` is correct (given the question and the steps before it). ``questions`` and ``step_lists`` have the
    same length; the same question may repeat (one entry per candidate).
    """

    def score(self, questions: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]: ...


def aggregate_scores(scores: Sequence[float], how: Aggregation | str = "min") -> float:
    """Combine one solution's step scores: ``min`` (weakest step, the PRM800K/Math-Shepherd choice), ``last``,
    ``product`` (probability that every step is right) or ``mean``. An empty solution scores 0."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    if len(scores) == 0:
        return 0.0
    values = [float(s) for s in scores]
    if how == "min":
        return min(values)
    if how == "last":
        return values[-1]
    if how == "product":
        return math.prod(values)
    return sum(values) / len(values)
