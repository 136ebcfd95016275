"""``experiments/train.py --checkpoint-every N --resume``: a run killed with ``kill -9`` and restarted with the same
command ends with exactly the weights of a run that was never killed, and its ``progress.csv`` lists every update
once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("tyro")

from agents.engines.testing import save_tiny_model  # noqa: E402
from experiments import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4


def command(model: Path, log_dir: Path, save: Path, *extra: str) -> list[str]:
    return [
        "sft",
        "--model", str(model),
        "--env-kwargs", '{"level": 1}',
        "--steps", str(STEPS),
        "--batch-size", "2",
        "--learning-rate", "1e-3",
        "--autocast", "off",
        "--verbose", "0",
        "--eval-problems", "0",
        "--threads", "1",
        "--log-dir", str(log_dir),
        "--save", str(save),
        *extra,
    ]  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "policy" / "model.safetensors")


def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny", seed=0)
    train.main(command(model, tmp_path / "straight", tmp_path / "straight-agent"))

    log_dir = tmp_path / "killed"
    args = command(
        model, log_dir, tmp_path / "killed-agent", "--checkpoint-every", "1", "--keep-checkpoints", "2"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 300
    while not (log_dir / "checkpoints" / "checkpoint_2").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (tmp_path / "killed-agent").exists()  # killed before the end

    results = train.main([*args, "--resume"])
    assert results["resumed_from"] is not None
    expected, actual = weights(tmp_path / "straight-agent"), weights(tmp_path / "killed-agent")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    with open(log_dir / "progress.csv") as handle:
        updates = [row["time/updates"] for row in csv.DictReader(handle)]
    assert updates == [str(i) for i in range(1, STEPS + 1)]
    assert len(os.listdir(log_dir / "checkpoints")) == 2  # keep-checkpoints, no stale folders
