"""Gymnasium wrappers for reasoning envs: process / outcome rewards, penalties, custom reward functions and
trajectory recording. All record their constructor arguments, so ``gym.make(env.spec)`` rebuilds a wrapped env."""

from wrappers.candidate_choice import CandidateChoice as CandidateChoice
from wrappers.recorder import SCHEMA, TrajectoryRecorder, append_jsonl, read_trajectories
from wrappers.rewards import FunctionReward, LengthPenalty, OutcomeReward, PRMReward, StepPenalty

__all__ = [
    "SCHEMA",
    "FunctionReward",
    "LengthPenalty",
    "OutcomeReward",
    "PRMReward",
    "StepPenalty",
    "TrajectoryRecorder",
    "append_jsonl",
    "read_trajectories",
]
