"""Training logs in Stable-Baselines3's format: one ``Logger`` writing stdout, CSV and TensorBoard at once.

Why SB3's logger: its key namespaces (``rollout/``, ``train/``, ``time/``) and output formats are what RL users
already read, and its TensorBoard writer needs no extra code here.

Why the file formats are opened for appending: a run restarted into its log dir (``--resume`` after a kill) must
keep the history it already wrote. SB3 opens ``progress.csv`` with ``"w"``; here it is continued instead. A resumed
run passes the update count it resumes from, and rows (and TensorBoard events) of later updates, which the kill
undid, are dropped so that each update appears once.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    JSONOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
)

__all__ = ["LOG_KEYS", "AppendingCSVOutputFormat", "make_logger"]

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

STEP_KEY = "time/updates"
"""The column that numbers the rows (the update count after which the row was written)."""


def _kept_rows(text: str, resume_step: int | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an existing progress file; a torn last line and rows past ``resume_step`` are dropped."""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return [], []
    header, body = rows[0], [row for row in rows[1:] if len(row) == len(rows[0])]
    if resume_step is not None and STEP_KEY in header:
        column = header.index(STEP_KEY)

        def step_of(row: list[str]) -> float:
            try:
                return float(row[column])
            except ValueError:
                return float("-inf")  # rows without an update count (e.g. a first evaluation) are kept

        body = [row for row in body if step_of(row) <= resume_step]
    return header, body


class AppendingCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV writer continuing an existing ``progress.csv`` (same columns, new ones added as SB3 adds them)."""

    def __init__(self, filename: str, resume_step: int | None = None) -> None:
        existing = Path(filename).read_text() if os.path.exists(filename) else ""
        header, body = _kept_rows(existing, resume_step)
        self.file = open(filename, "w+")
        self.keys = list(header)
        self.separator = ","
        self.quotechar = '"'
        if header:
            writer = csv.writer(self.file, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(body)
            self.file.flush()


class _AppendingJSONOutputFormat(JSONOutputFormat):
    def __init__(self, filename: str) -> None:
        self.file = open(filename, "a")


class _AppendingHumanOutputFormat(HumanOutputFormat):
    def __init__(self, filename: str) -> None:
        super().__init__(open(filename, "a"))
        self.own_file = True


class _ResumingTensorBoardOutputFormat(TensorBoardOutputFormat):
    def __init__(self, folder: str, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides the killed run's events from the resumed update on
        self.writer = SummaryWriter(
            log_dir=folder, purge_step=None if resume_step is None else resume_step + 1
        )
        self._is_closed = False


def _output(name: str, folder: str, resume_step: int | None) -> KVWriter:
    if name == "stdout":
        return HumanOutputFormat(sys.stdout)
    if name == "csv":
        return AppendingCSVOutputFormat(os.path.join(folder, "progress.csv"), resume_step)
    if name == "json":
        return _AppendingJSONOutputFormat(os.path.join(folder, "progress.json"))
    if name == "log":
        return _AppendingHumanOutputFormat(os.path.join(folder, "log.txt"))
    if name == "tensorboard":
        return _ResumingTensorBoardOutputFormat(folder, resume_step)
    raise ValueError(f"unknown log format {name!r}; expected stdout, csv, json, log or tensorboard")


def make_logger(
    log_dir: str | Path | None,
    formats: Sequence[str] = ("stdout", "csv", "tensorboard"),
    verbose: int = 1,
    resume_step: int | None = None,
) -> Logger:
    """An SB3 ``Logger``; without ``log_dir`` it only prints (and not even that when ``verbose == 0``).

    Files in ``log_dir`` are continued, not truncated; with ``resume_step`` (the update count a resumed agent starts
    from) rows and TensorBoard events of later updates are dropped."""
    formats = [f for f in formats if verbose or f != "stdout"]
    if log_dir is None:
        outputs = [HumanOutputFormat(sys.stdout)] if "stdout" in formats else []
        return Logger(folder=None, output_formats=outputs)
    folder = str(log_dir)
    os.makedirs(folder, exist_ok=True)
    logger = Logger(folder=folder, output_formats=[_output(f, folder, resume_step) for f in formats])
    if formats and list(formats) != ["stdout"]:
        logger.log(f"Logging to {folder}")
    return logger
