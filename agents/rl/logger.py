"""Training logs in Stable-Baselines3's format: one ``Logger`` writing stdout, CSV and TensorBoard at once.

Why SB3's logger: its key namespaces (``rollout/``, ``train/``, ``time/``) and output formats are what RL users
already read, and its TensorBoard writer needs no extra code here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from stable_baselines3.common.logger import HumanOutputFormat, Logger, configure

__all__ = ["LOG_KEYS", "make_logger"]

LOG_KEYS = (
    "rollout/ep_rew_mean",
    "rollout/accuracy",
    "rollout/tokens",
    "train/policy_loss",
    "train/value_loss",
    "train/kl",
    "train/clip_fraction",
    "train/entropy",
    "time/fps",
)
"""The keys the agents record (a subset per agent: SFT has no clip fraction, GRPO no value loss)."""


def make_logger(
    log_dir: str | Path | None, formats: Sequence[str] = ("stdout", "csv", "tensorboard"), verbose: int = 1
) -> Logger:
    """An SB3 ``Logger``; without ``log_dir`` it only prints (and not even that when ``verbose == 0``)."""
    formats = [f for f in formats if verbose or f != "stdout"]
    if log_dir is None:
        outputs = [HumanOutputFormat(sys.stdout)] if "stdout" in formats else []
        return Logger(folder=None, output_formats=outputs)
    return configure(str(log_dir), list(formats))
