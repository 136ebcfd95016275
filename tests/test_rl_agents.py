"""GRPO / PPO / SFT on tiny random models: they learn a toy task, resume exactly, log, stop on callbacks, LoRA."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from agents.engines import HFEngine
from agents.engines.testing import byte_level_tokenizer, tiny_model
from agents.rl.callbacks import BaseCallback, CheckpointCallback
from agents.rl.grpo import GRPO, GRPOConfig
from agents.rl.ppo import PPO, PPOConfig
from agents.rl.rollout import episode_to_tokens
from agents.rl.sft import SFT, SFTConfig, SFTExample
from agents.rl.toy import DIGITS_ID, register_toy_envs

register_toy_envs()


def tiny_engine(seed: int = 0) -> HFEngine:
    model, tokenizer = tiny_model(seed, tokenizer=byte_level_tokenizer())
    return HFEngine(model, tokenizer, num_threads=1)


class RewardHistory(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[float] = []

    def _on_step(self) -> bool:
        self.rewards.append(self.agent.last_rollout_stats["rollout/ep_rew_mean"])
        return True


def toy_grpo(engine: HFEngine, **overrides) -> GRPO:
    config = GRPOConfig(
        prompts_per_update=4,
        group_size=8,
        max_new_tokens=8,
        max_steps=1,
        learning_rate=2e-3,
        kl_coef=0.0,
        autocast="off",
        verbose=0,
        seed=0,
    )
    return GRPO(engine, DIGITS_ID, config, **overrides)


def test_grpo_reward_rises_on_toy_task():
    history = RewardHistory()
    toy_grpo(tiny_engine()).learn(40, callback=history)
    first, last = np.mean(history.rewards[:5]), np.mean(history.rewards[-5:])
    assert first < 0.15
    # The trajectory is chaotic at this learning rate (float rounding changes it after ~10 updates): over six
    # tiny-model seeds the rise after 40 updates was 0.25 to 0.95, so 0.2 is the margin that does not depend on it.
    assert last > first + 0.2, history.rewards


def test_ppo_reward_rises_on_toy_task():
    config = PPOConfig(
        prompts_per_update=8,
        group_size=4,
        max_new_tokens=8,
        max_steps=1,
        learning_rate=2e-3,
        critic_learning_rate=1e-2,
        kl_coef=0.0,
        epochs=2,
        minibatches=2,
        autocast="off",
        verbose=0,
    )
    history = RewardHistory()
    agent = PPO(tiny_engine(), DIGITS_ID, config)
    # 40 updates like GRPO's test: at 30 the margin held for 9 of 12 tiny-model seeds, at 40 for 8 of 8
    agent.learn(40, callback=history)
    first, last = np.mean(history.rewards[:5]), np.mean(history.rewards[-5:])
    assert last > first + 0.2, history.rewards
    assert any(p.abs().sum() > 0 for p in agent.value_head.parameters()), "the critic never trained"


def _trainable(agent) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.model.named_parameters() if p.requires_grad}


def test_checkpoint_resume_is_exact(tmp_path):
    config_overrides = {"epochs": 2, "minibatches": 2}  # exercises torch RNG (minibatch shuffles) too
    straight = toy_grpo(tiny_engine(), **config_overrides)
    straight.learn(2, callback=CheckpointCallback(save_freq=2, save_path=tmp_path))
    straight.learn(2)
    resumed = toy_grpo(tiny_engine(), **config_overrides)
    (checkpoint,) = tmp_path.glob("checkpoint_*")
    resumed.load_checkpoint(checkpoint)
    assert resumed.num_updates == 2 and checkpoint.name == "checkpoint_2"
    resumed.learn(2)
    assert resumed.num_updates == 4 and resumed.num_timesteps == straight.num_timesteps
    expected, actual = _trainable(straight), _trainable(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_callback_returning_false_stops_training():
    agent = toy_grpo(tiny_engine())
    agent.learn(10, callback=lambda locals_, globals_: agent.num_updates < 2)
    assert agent.num_updates == 2
    assert agent.num_timesteps == 2 * 32  # SB3's meaning: env steps (32 one-step episodes per update)


def test_logs_go_to_csv_and_tensorboard(tmp_path):
    agent = toy_grpo(tiny_engine(), log_dir=str(tmp_path), kl_coef=0.05)
    agent.learn(2)
    with open(tmp_path / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for key in ("rollout/ep_rew_mean", "rollout/accuracy", "rollout/tokens", "train/policy_loss", "train/kl"):
        assert key in rows[0]
    for key in ("train/clip_fraction", "train/entropy", "time/fps"):
        assert key in rows[0]
    assert float(rows[1]["train/kl"]) >= 0.0
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_lora_trains_only_the_adapters():
    pytest.importorskip("peft")
    engine = tiny_engine()
    base_before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    agent = toy_grpo(engine, lora_r=4, learning_rate=1e-2, kl_coef=0.05)
    trainable_before = _trainable(agent)
    assert trainable_before and all("lora" in name for name in trainable_before)
    agent.learn(2)
    changed = [n for n, p in _trainable(agent).items() if not torch.equal(p, trainable_before[n])]
    assert changed
    frozen = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in agent.model.named_parameters()
    }
    for name, before in base_before.items():
        assert torch.equal(frozen[name], before), name


def test_sft_fits_worked_solutions():
    engine = tiny_engine()
    agent = SFT(
        engine, "openr/Arithmetic-v0", SFTConfig(batch_size=8, learning_rate=3e-3, autocast="off", verbose=0)
    )
    examples = agent.reference_examples(8)
    assert all(ex.steps[-1].startswith("The answer is \\boxed{") for ex in examples)
    first = agent.loss_on(examples)["train/loss"]
    agent.learn(15, examples=examples)
    assert agent.loss_on(examples)["train/loss"] < 0.7 * first


def test_sft_accepts_recorded_trajectories():
    agent = SFT(tiny_engine(), None, SFTConfig(batch_size=2, autocast="off", verbose=0))
    examples = [SFTExample("What is 2 + 3?", ["2 + 3 = 5", "The answer is \\boxed{5}."], "Solve it.")]
    agent.learn(2, examples=examples)
    assert agent.num_updates == 2


def test_step_ends_point_at_the_last_token_of_each_step():
    engine = tiny_engine()
    steps = ["2 + 3 = 5", "The answer is \\boxed{5}."]
    tokens = episode_to_tokens(engine.tokenizer, engine, "What is 2 + 3?", "Solve.", steps, "eos")
    text = engine.tokenizer.decode(tokens.response_ids[: tokens.step_ends[0] + 1])
    assert text == "2 + 3 = 5\n\n"
    assert tokens.step_ends[-1] == len(tokens.response_ids) - 1
    assert tokens.response_ids[-1] == engine.tokenizer.eos_token_id
    prompt = engine.tokenizer.decode(tokens.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n") and "What is 2 + 3?" in prompt


def test_episode_mode_matches_the_step_protocol():
    agent = toy_grpo(tiny_engine(), rollout_mode="episode")
    agent.learn(1)
    assert agent.last_rollout_stats["rollout/ep_len_mean"] == 1.0


def test_grpo_and_ppo_run_on_arithmetic_with_step_rewards():
    engine = tiny_engine()
    common = {"prompts_per_update": 2, "max_new_tokens": 6, "max_steps": 2, "verbose": 0, "autocast": "off"}
    grpo = GRPO(engine, "openr/Arithmetic-v0", GRPOConfig(group_size=2, process_rewards=True, **common))
    grpo.learn(1)
    ppo = PPO(engine, "openr/Arithmetic-v0", PPOConfig(group_size=2, **common))
    ppo.learn(1)
    assert ppo.last_rollout_stats["rollout/ep_len_mean"] <= 2
    result = ppo.evaluate([1, 2], k=2, temperature=1.0)
    assert set(result) == {"accuracy", "pass@2", "answered", "tokens"}


def test_reward_wrappers_of_the_env_are_kept():
    import gymnasium as gym

    from wrappers import StepPenalty

    env = StepPenalty(gym.make("openr/Arithmetic-v0", level=1), penalty=0.25)
    agent = toy_grpo(tiny_engine(), max_steps=2, max_new_tokens=4)
    agent.env = env
    episodes = agent.collect(num_problems=1, group_size=2)
    for episode in episodes:
        assert episode.step_rewards and all(r <= -0.25 for r in episode.step_rewards[:-1])
        assert episode.step_rewards[0] <= -0.25


def test_length_sorted_micro_batches_give_the_same_log_probs_and_values():
    from agents.rl.forward import policy_forward
    from agents.rl.rollout import TokenizedEpisode, make_token_batch

    agent = PPO(tiny_engine(), DIGITS_ID, PPOConfig(micro_batch_size=2, autocast="off", verbose=0))
    torch.nn.init.normal_(agent.value_head.weight)
    lengths = [(3, 2), (9, 7), (4, 1), (6, 5), (2, 9)]  # (prompt, response) tokens: very different widths
    generator = torch.Generator().manual_seed(0)
    items = [
        TokenizedEpisode(
            torch.randint(3, 200, (p,), generator=generator).tolist(),
            torch.randint(3, 200, (r,), generator=generator).tolist(),
            [r - 1],
        )
        for p, r in lengths
    ]
    batch = make_token_batch(items, agent.pad_token_id)
    chunks = agent.length_sorted_chunks(batch, list(range(len(batch))))
    assert chunks == [[1, 3], [4, 0], [2]]  # longest first (16, 11, 11, 5, 5 tokens), ties in row order
    assert batch.select(chunks[-1]).input_ids.shape[1] == 5  # padding up to 16 columns is cut
    whole = policy_forward(agent.model.eval(), batch, value_head=agent.value_head)
    sorted_out = agent.no_grad_forward(batch, value_head=agent.value_head)
    torch.testing.assert_close(
        sorted_out.logprobs, whole.logprobs * batch.response_mask, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(sorted_out.values, whole.values, atol=1e-5, rtol=1e-5)


def test_shared_prompt_forward_gives_the_same_log_probs_and_gradients():
    from agents.engines.prefix_cache import full_attention_cache
    from agents.rl.forward import policy_forward, prompt_groups
    from agents.rl.rollout import TokenizedEpisode, make_token_batch

    model, _ = tiny_model(0, tokenizer=byte_level_tokenizer())
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (n,), generator=generator).tolist() for n in (7, 4)]
    shapes = [(0, 5), (1, 2), (0, 1), (1, 6), (0, 3)]  # (prompt, response tokens): groups of 3 and 2 samples
    items = [
        TokenizedEpisode(prompts[p], torch.randint(3, 200, (r,), generator=generator).tolist(), [r - 1])
        for p, r in shapes
    ]
    batch = make_token_batch(items, 0)
    assert prompt_groups(batch) == [[0, 2, 4], [1, 3]]
    assert full_attention_cache(model)  # so the whole-batch call below takes the shared-prompt path
    weights = torch.randn(batch.response_mask.shape, generator=generator) * batch.response_mask

    def logprobs_and_grads(rows_per_call):
        model.zero_grad()
        out = torch.zeros(batch.response_mask.shape)
        for rows in rows_per_call:  # one row per call: no prompt is shared
            logprobs = policy_forward(model, batch.select(rows), temperature=1.3).logprobs
            (logprobs * weights[rows]).sum().backward()
            out[rows] = logprobs.detach()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    shared, shared_grads = logprobs_and_grads([list(range(len(batch)))])
    separate, separate_grads = logprobs_and_grads([[row] for row in range(len(batch))])
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-4)
    for name, grad in separate_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_trainable_agent_reference_is_frozen_and_matches_policy_before_training():
    """The reference lives in TrainableAgent: a frozen copy whose log-probs equal the policy's until it moves."""
    agent = toy_grpo(tiny_engine(), kl_coef=0.05)
    assert agent.has_reference and agent.reference is not agent.model
    assert not any(p.requires_grad for p in agent.reference.parameters())
    batch = agent.tokenize(agent.collect(4, 8)).tokens
    torch.testing.assert_close(agent.reference_logprobs(batch), agent.no_grad_forward(batch).logprobs)
    agent.learn(1)
    assert not torch.allclose(agent.reference_logprobs(batch), agent.no_grad_forward(batch).logprobs)
    no_reference = toy_grpo(tiny_engine(), kl_coef=0.0)
    assert not no_reference.has_reference and no_reference.reference is None
    with pytest.raises(ValueError, match="no reference"):
        no_reference.reference_logprobs(batch)
