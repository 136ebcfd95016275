"""Several training runs in one figure: held-out accuracy and training reward per policy update, one colour per run.

Why: ``experiments/train.py`` draws each run's own ``curves.png``; comparing seeds (or agents) needs them on
the same axes. Reads each run's SB3 ``progress.csv``; the held-out accuracy at update 0 (the starting policy,
measured once and skipped in the runs with ``--skip-initial-eval``) can be given with ``--start-accuracy``.

    python -m experiments.plot_rl runs/rl/grpo_s0 runs/rl/grpo_s1 --labels "seed 0" "seed 1" \\
        --start-accuracy 0.583 --title "GRPO on Arithmetic level 2" --out docs/rl/grpo_seeds.png
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro


def read_progress(csv_path: Path) -> list[dict[str, str]]:
    """The rows of an SB3 ``progress.csv``."""
    with open(csv_path) as handle:
        return list(csv.DictReader(handle))


def progress_series(rows: list[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    """(updates, values) of ``key`` (rows without the key or the update count are skipped)."""
    points = [
        (float(row["time/updates"]), float(row[key]))
        for row in rows
        if row.get(key) not in (None, "") and row.get("time/updates") not in (None, "")
    ]
    return [x for x, _ in points], [y for _, y in points]


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (the first points average what exists so far)."""
    array = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(array, 0, 0.0))
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_runs(
    runs: list[Path],
    labels: list[str],
    out: Path,
    *,
    start_accuracy: float | None = None,
    window: int = 5,
    title: str = "",
    training_key: str = "rollout/ep_rew_mean",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (held_out, training) = plt.subplots(1, 2, figsize=(11, 3.8))
    highest = 1.0
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{index}"
        rows = read_progress(run / "progress.csv")
        xs, ys = progress_series(rows, "eval/accuracy")
        if start_accuracy is not None and (not xs or xs[0] > 0):
            xs, ys = [0.0, *xs], [start_accuracy, *ys]
        held_out.plot(xs, ys, marker="o", color=colour, label=label)
        xs, ys = progress_series(rows, training_key)
        highest = max([highest, *ys])
        training.plot(xs, ys, color=colour, alpha=0.25)
        training.plot(xs, moving_average(ys, window), color=colour, label=f"{label} ({window}-update mean)")
    held_out.set_title("held-out greedy accuracy")
    training.set_title(f"training {training_key} per update (sampled)")
    for axis in (held_out, training):
        axis.set_xlabel("policy updates")
        axis.set_ylim(-0.02, 1.02 if axis is held_out else max(1.02, highest * 1.02))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


@dataclass
class PlotRunsConfig:
    """Several training runs in one figure: held-out accuracy and training reward per policy update."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders with a progress.csv (positional)."""
    out: Path
    """PNG file to write."""
    labels: tuple[str, ...] = ()
    """Legend label per run (default: the folder names)."""
    start_accuracy: float | None = None
    """Held-out accuracy at update 0 (for runs made with --skip-initial-eval)."""
    window: int = 5
    """Updates in the training-reward moving mean."""
    title: str = ""
    """Figure title."""
    training_key: str = "rollout/ep_rew_mean"
    """The ``progress.csv`` column of the right panel (``rollout/accuracy``: the sampled outcome accuracy, which
    runs whose rewards add PRM scores share with outcome-only runs)."""


def parse_args(argv: list[str] | None = None) -> PlotRunsConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(PlotRunsConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    labels = list(args.labels) or [run.name for run in args.runs]
    path = plot_runs(
        list(args.runs),
        labels,
        args.out,
        start_accuracy=args.start_accuracy,
        window=args.window,
        title=args.title,
        training_key=args.training_key,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
