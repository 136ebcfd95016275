"""OREAL on tiny random models: sample selection, the token-level reward model, and learning on a toy task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from agents.engines import HFEngine
from agents.engines.testing import byte_level_tokenizer, tiny_model
from agents.rl.callbacks import BaseCallback
from agents.rl.oreal import OREAL, OREALConfig, oreal_keep_mask
from agents.rl.toy import DigitsEnv

ANY_DIGIT_ID = "openr-toy/AnyDigit-v0"


class AnyDigitEnv(DigitsEnv):
    """Digits, judged right when any character is a digit (a random byte-level model is right ~30% of the time,
    so OREAL's groups mix right and wrong samples)."""

    def step(self, action: str):
        observation, reward, terminated, truncated, info = super().step(action)
        info["is_success"] = info["correct"] = reward > 0
        return observation, reward, terminated, truncated, info


if ANY_DIGIT_ID not in gym.registry:
    gym.register(ANY_DIGIT_ID, entry_point=AnyDigitEnv, max_episode_steps=1)


def tiny_engine(seed: int = 0) -> HFEngine:
    model, tokenizer = tiny_model(seed, tokenizer=byte_level_tokenizer())
    return HFEngine(model, tokenizer, num_threads=1)


def toy_oreal(**overrides) -> OREAL:
    config = OREALConfig(
        prompts_per_update=4,
        group_size=8,
        max_new_tokens=8,
        max_steps=1,
        learning_rate=2e-3,
        autocast="off",
        verbose=0,
        seed=0,
    )
    return OREAL(tiny_engine(), ANY_DIGIT_ID, config, **overrides)


def test_keep_mask_drops_agreeing_groups_and_keeps_one_pair():
    correct = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.float32)
    torch.manual_seed(0)
    keep = oreal_keep_mask(correct, 4, keep_one_pair=True).view(4, 4)
    assert keep.sum(1).tolist() == [2, 0, 0, 2]  # groups 2 and 3 agree: dropped
    for group in (0, 3):
        assert sorted(correct.view(4, 4)[group][keep[group]].tolist()) == [0.0, 1.0]
    keep_all = oreal_keep_mask(correct, 4, keep_one_pair=False).view(4, 4)
    assert keep_all.sum(1).tolist() == [4, 0, 0, 4]


class AccuracyHistory(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.accuracy: list[float] = []

    def _on_step(self) -> bool:
        self.accuracy.append(self.agent.last_rollout_stats["rollout/accuracy"])
        return True


def test_oreal_accuracy_rises_on_toy_task():
    history = AccuracyHistory()
    agent = toy_oreal()
    agent.learn(25, callback=history)
    first, last = np.mean(history.accuracy[:5]), np.mean(history.accuracy[-5:])
    assert last > first + 0.2, history.accuracy
    assert agent.has_reference  # kl_coef 0.01 by default


def test_token_reward_model_trains_and_weights_tokens(tmp_path):
    agent = toy_oreal(token_reward_model=True, reward_model_learning_rate=1e-3, log_dir=str(tmp_path))
    assert agent.reward_model is not None
    head_before = agent.reward_model["head"].weight.detach().clone()
    policy_before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    agent.config.reward_model_only_updates = 1
    agent.learn(1)  # the released actor_freeze_steps: only the reward model moves
    assert not torch.equal(agent.reward_model["head"].weight, head_before)
    assert all(torch.equal(p, policy_before[n]) for n, p in agent.model.named_parameters())
    agent.learn(1)
    assert any(not torch.equal(p, policy_before[n]) for n, p in agent.model.named_parameters())
    import csv

    with open(tmp_path / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert "train/reward_model_loss" in rows[-1] and "train/positive_loss" in rows[-1]
    assert "reward_model" in agent.checkpoint_modules()
