"""Runs that survive being killed: checkpoints are written aside and switched atomically (a real ``kill -9`` of a
writing process never leaves a mixed checkpoint), stale folders are cleared, the newest complete checkpoint is found,
and a restarted run continues its ``progress.csv`` instead of truncating it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from agents.engines import HFEngine
from agents.engines.testing import byte_level_tokenizer, tiny_model
from agents.rl.callbacks import CheckpointCallback
from agents.rl.checkpoint import atomic_folder, latest_checkpoint
from agents.rl.grpo import GRPO, GRPOConfig
from agents.rl.toy import DIGITS_ID, register_toy_envs

ROOT = Path(__file__).resolve().parent.parent
register_toy_envs()


def toy_grpo(**overrides) -> GRPO:
    model, tokenizer = tiny_model(0, tokenizer=byte_level_tokenizer())
    config = GRPOConfig(
        prompts_per_update=2,
        group_size=4,
        max_new_tokens=4,
        max_steps=1,
        autocast="off",
        verbose=0,
        seed=0,
        **overrides,
    )
    return GRPO(HFEngine(model, tokenizer, num_threads=1), DIGITS_ID, config)


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_folder(final) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(final) as staging:
        (staging / "a").write_text("new")
        raise RuntimeError("killed")
    assert (final / "a").read_text() == "old" and os.listdir(tmp_path) == ["ckpt"]
    with atomic_folder(final) as staging:
        (staging / "b").write_text("new")
    assert os.listdir(final) == ["b"] and os.listdir(tmp_path) == ["ckpt"]


def test_stale_folders_of_dead_writers_are_cleared_and_an_old_copy_restored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".checkpoint_4.tmp-{dead.pid}-abcd1234").mkdir()  # a writer killed mid-write
    (
        tmp_path / f".checkpoint_2.old-{dead.pid}-abcd1234"
    ).mkdir()  # killed between the renames of an overwrite
    (tmp_path / f".checkpoint_2.old-{dead.pid}-abcd1234" / "training_state.pt").write_bytes(b"x")
    (tmp_path / f".checkpoint_9.tmp-{os.getpid()}-abcd1234").mkdir()  # a live writer: left alone
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_2"
    assert sorted(os.listdir(tmp_path)) == [f".checkpoint_9.tmp-{os.getpid()}-abcd1234", "checkpoint_2"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from tests.test_rl_checkpoint import toy_grpo
    agent = toy_grpo()
    i = {start}
    while True:
        with torch.no_grad():
            for p in agent.model.parameters():
                p.fill_(float(i))
        agent.num_timesteps = i
        agent.save_checkpoint({folder!r} + "/latest")
        agent.save_checkpoint({folder!r} + f"/checkpoint_{{i}}")
        print(i, flush=True)
        i += 1
    """
)


def _consistent_value(folder: Path) -> int:
    """The one value every part of a checkpoint holds (weights, optimizer-side state, counters); fails if mixed."""
    from safetensors.torch import load_file

    state = torch.load(folder / "training_state.pt", weights_only=False)
    step = int(state["counters"]["num_timesteps"])
    for tensor in state["modules"]["policy"].values():
        assert torch.all(tensor == step), f"{folder}: training state mixes steps"
    for tensor in load_file(folder / "policy" / "model.safetensors").values():
        assert torch.all(tensor == step), f"{folder}: policy/ is from another step than training_state.pt"
    assert (folder / "agent.json").is_file()
    return step


def test_kill_minus_9_during_checkpoint_writes_never_leaves_a_mixed_checkpoint(tmp_path: Path) -> None:
    start = 1
    for kill in range(2):
        script = WRITER.format(root=str(ROOT), start=start, folder=str(tmp_path))
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        written = 0
        deadline = time.monotonic() + 120
        while written < 2 and time.monotonic() < deadline:  # a few checkpoints, then a kill at some moment
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"writer died: {process.stderr.read()}")
            written += 1
        time.sleep(0.05 * (kill + 1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()
        newest = latest_checkpoint(tmp_path)  # clears what the killed writer left
        assert newest is not None
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
        step = _consistent_value(newest)
        assert newest.name == f"checkpoint_{step}"
        for folder in tmp_path.iterdir():
            _consistent_value(folder)
        start = step + 1
    resumed = toy_grpo()
    resumed.load_checkpoint(latest_checkpoint(tmp_path))
    assert resumed.num_timesteps == step
    assert all(torch.all(p == step) for p in resumed.model.parameters())


def _updates(log_dir: Path) -> list[str]:
    with open(log_dir / "progress.csv") as handle:
        return [row["time/updates"] for row in csv.DictReader(handle)]


def test_restart_into_the_same_log_dir_continues_progress_csv(tmp_path: Path) -> None:
    log_dir, saves = tmp_path / "logs", tmp_path / "ckpt"
    first = toy_grpo(log_dir=str(log_dir))
    first.learn(3, callback=CheckpointCallback(save_freq=2, save_path=saves, keep_last=1))
    assert _updates(log_dir) == ["1", "2", "3"]
    assert sorted(os.listdir(saves)) == ["checkpoint_2"]
    with open(log_dir / "progress.csv", "a") as handle:
        handle.write("0.5,0.1,")  # the kill tore the last line
    resumed = toy_grpo(log_dir=str(log_dir))
    resumed.load_checkpoint(latest_checkpoint(saves))
    resumed.learn(2)
    # update 3 was undone by the kill (the checkpoint holds 2): its row goes, every other row stays
    assert _updates(log_dir) == ["1", "2", "3", "4"]
    fresh = toy_grpo(log_dir=str(log_dir))
    fresh.learn(1)  # a new run into the same dir appends too
    assert _updates(log_dir) == ["1", "2", "3", "4", "1"]
