"""Known-answer tests for the RL losses (values worked out by hand in the comments)."""

import math

import pytest
import torch

from agents.rl.losses import (
    aggregate_token_loss,
    clip_fraction,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    group_normalized_advantages,
    k3_kl,
    masked_mean,
    masked_whiten,
    oreal_kl_penalty,
    oreal_negative_loss,
    oreal_positive_loss,
    oreal_token_weights,
    process_group_advantages,
    rloo_advantages,
    step_rewards_to_tokens,
    threshold_rescale,
    token_reward_model_loss,
)


def assert_close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-4, rtol=1e-4)


def test_group_normalisation_known_answer():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    advantages = group_normalized_advantages(rewards, group_size=4)
    # group 1: mean 0.25, population std sqrt(0.25 * 0.75) = 0.4330
    std = math.sqrt(0.25 * 0.75)
    expected_first = [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std]
    assert advantages[:4].tolist() == pytest.approx(expected_first, rel=1e-4)
    # group 2: identical rewards -> no signal, and no NaN
    assert advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_group_normalisation_rejects_ragged_groups():
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.zeros(5), group_size=4)


def test_process_supervision_advantages_known_answer():
    # one group of two samples; step rewards [0, 1] and [0]: mean 1/3, population std sqrt(2/9) = 0.4714
    advantages = process_group_advantages([[0.0, 1.0], [0.0]], group_size=2)
    low, high = -1 / 3 / math.sqrt(2 / 9), 2 / 3 / math.sqrt(2 / 9)  # -0.7071, 1.4142
    assert advantages[0] == pytest.approx([low + high, high], rel=1e-4)
    assert advantages[1] == pytest.approx([low], rel=1e-4)


def test_gae_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert_close(advantages, [[0.5, 0.5, 0.5]])
    assert_close(returns, [[1.0, 1.0, 1.0]])


def test_gae_known_answer_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.4, 9.0]])  # 9.0 sits on padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: deltas (0, 0, 0.5) -> A = (0.125, 0.25, 0.5)
    # row 1: delta_1 = 1 - 0.4 = 0.6 (episode ends), delta_0 = 0.4 - 0.2 = 0.2 -> A = (0.2 + 0.5*0.6, 0.6, 0)
    assert_close(advantages, [[0.125, 0.25, 0.5], [0.5, 0.6, 0.0]])
    assert_close(returns, [[0.625, 0.75, 1.0], [0.7, 1.0, 0.0]])


def test_gae_discount():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.zeros(1, 2)
    advantages, _ = gae_advantages(rewards, values, torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert_close(advantages, [[0.9, 1.0]])


def test_step_rewards_land_on_step_ends():
    rewards = step_rewards_to_tokens([[1, 4], [2]], [[0.3, 1.0], [0.5]], length=5)
    assert_close(rewards, [[0, 0.3, 0, 0, 1.0], [0, 0, 0.5, 0, 0]])


def test_k3_kl_known_answer():
    logprobs = torch.log(torch.tensor([0.5, 0.3]))
    ref_logprobs = torch.log(torch.tensor([0.25, 0.3]))
    kl = k3_kl(logprobs, ref_logprobs)
    # ratio = 0.25 / 0.5 = 0.5: 0.5 - ln 0.5 - 1 = 0.19315; equal probabilities: 0
    assert kl.tolist() == pytest.approx([0.5 - math.log(0.5) - 1.0, 0.0], abs=1e-6)


def test_k3_kl_is_unbiased_for_true_kl():
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    estimate = k3_kl(torch.log(p[samples]), torch.log(q[samples])).mean().item()
    true_kl = float((p * (p / q).log()).sum())
    assert estimate == pytest.approx(true_kl, rel=0.02)


def test_clipped_policy_loss_known_answer():
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = clipped_policy_loss(ratios.log(), torch.zeros(4), advantages, clip_range=0.2)
    clipped = clip_fraction(ratios.log(), torch.zeros(4), 0.2)
    # min(1.5, 1.2) = 1.2 | min(-1.5, -1.2) = -1.5 | min(0.5, 0.8) = 0.5 | min(-0.5, -0.8) = -0.8
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    # SB3 / CleanRL clip fraction: |ratio - 1| > eps, whatever the advantage's sign
    assert clipped.tolist() == [1.0, 1.0, 1.0, 1.0]
    near = clip_fraction(torch.tensor([1.1, 0.85, 1.25]).log(), torch.zeros(3), 0.2)
    assert near.tolist() == [0.0, 0.0, 1.0]


def test_clipped_policy_loss_gradient_vanishes_when_clipped():
    logprobs = torch.tensor([math.log(1.5)], requires_grad=True)
    loss = clipped_policy_loss(logprobs, torch.zeros(1), torch.tensor([1.0]), clip_range=0.2)
    loss.sum().backward()
    assert logprobs.grad.item() == 0.0


def test_clipped_value_loss_known_answer():
    values = torch.tensor([1.0, 1.0])
    old_values = torch.tensor([0.5, 0.9])
    returns = torch.tensor([2.0, 2.0])
    loss = clipped_value_loss(values, old_values, returns, clip_range=0.2)
    # row 0: unclipped (1-2)^2 = 1, clipped V = 0.7 -> 1.69; 0.5 * max = 0.845.  row 1: within range -> 0.5
    assert loss.tolist() == pytest.approx([0.845, 0.5])
    assert clipped_value_loss(values, old_values, returns, clip_range=None).tolist() == pytest.approx(
        [0.5, 0.5]
    )


def test_masked_statistics():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert_close(masked_whiten(values, mask), [[-1.0, 1.0, 0.0]])
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_explained_variance_known_answer():
    returns = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # padding (the 9) is ignored
    # masked returns 1, 1, 0, 0: variance 0.25
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 0.7), returns, mask) == pytest.approx(0.0)
    # values 0.5 everywhere but 1.5 on one token: residuals 0.5, -0.5, -0.5, -0.5 -> variance 0.1875
    values = torch.tensor([[0.5, 1.5, 0.0], [0.5, 0.5, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 0.1875 / 0.25)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


def test_aggregate_token_loss_known_answers():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    lengths = torch.tensor([[3.0, 3.0, 3.0], [1.0, 1.0, 1.0]])
    common = {"total_tokens": 4, "num_sequences": 2, "sequence_tokens": lengths, "max_tokens": 5}
    # token mean: (1 + 2 + 3 + 4) / 4;  sequence mean: (6 / 3 + 4 / 1) / 2;  Dr. GRPO: 10 / (2 * 5);  sum: 10
    assert aggregate_token_loss(loss, mask, "token", **common).item() == pytest.approx(2.5)
    assert aggregate_token_loss(loss, mask, "sequence", **common).item() == pytest.approx(3.0)
    assert aggregate_token_loss(loss, mask, "constant", **common).item() == pytest.approx(1.0)
    assert aggregate_token_loss(loss, mask, "sum", **common).item() == pytest.approx(10.0)
    # two micro-batches of one minibatch: their shares add up to the whole
    halves = [
        aggregate_token_loss(loss[r], mask[r], "sequence", **{**common, "sequence_tokens": lengths[r]})
        for r in ([0], [1])
    ]
    assert sum(h.item() for h in halves) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_token_loss(loss, mask, "mean", **common)


def test_rloo_advantages_known_answer():
    rewards = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: 1 - (-1) = 2; -1 - (1 - 1 - 1) / 3 = -1 + 1/3;  group 2 all agree -> 0
    expected = [2.0, -2 / 3, -2 / 3, -2 / 3, 0.0, 0.0, 0.0, 0.0]
    assert rloo_advantages(rewards, 4).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError):
        rloo_advantages(rewards, 3)


def test_oreal_positive_loss_is_advantage_weighted_nll():
    logprobs = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    loss = oreal_positive_loss(logprobs, torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.5]))
    assert loss.tolist() == pytest.approx([2 * math.log(2), 0.5 * 2 * math.log(4)])
    loss.sum().backward()
    assert logprobs.grad.tolist() == pytest.approx([-2.0, -1.0])  # descent raises log pi of correct tokens


def test_oreal_negative_loss_value_is_minus_a_w_and_gradient_is_policy_gradient():
    logprobs = torch.tensor([math.log(0.5), math.log(0.1)], requires_grad=True)
    advantages, weights = torch.tensor([-2 / 3, -2 / 3]), torch.tensor([1.0, 0.25])
    loss = oreal_negative_loss(logprobs, advantages, weights)
    # exp(logp - sg(logp)) = 1: the value is -A * w; the gradient is -A * w * d logp
    assert loss.tolist() == pytest.approx([2 / 3, 2 / 3 * 0.25])
    loss.sum().backward()
    assert logprobs.grad.tolist() == pytest.approx([2 / 3, 2 / 3 * 0.25])  # descent lowers log pi


def test_oreal_kl_penalty_is_scaled_k3():
    logprobs, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # ratio pi_ref / pi = 0.5: 0.5 - log 0.5 - 1
    assert oreal_kl_penalty(logprobs, ref, 0.01).item() == pytest.approx(0.01 * (0.5 + math.log(2) - 1))


def test_threshold_rescale_and_token_weights_known_answer():
    assert threshold_rescale(torch.tensor([0.2, 0.5, 0.75, 1.0])).tolist() == pytest.approx([0, 0, 0.5, 1])
    # scores (logits) 2, 0, -2: cumulative means 2, 1, 0 -> p = sigmoid(2), sigmoid(1), 0.5
    scores = torch.tensor([[2.0, 0.0, -2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    positive, negative = oreal_token_weights(scores, mask)
    p = torch.sigmoid(torch.tensor([2.0, 1.0, 0.0]))
    assert positive[0, :3].tolist() == pytest.approx(((p - 0.5) / 0.5).tolist())
    assert negative.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert positive[0, 3].item() == 0.0  # padding


def test_token_reward_model_loss_is_bce_of_the_sequence_mean_score():
    scores = torch.tensor([[1.0, 3.0, 7.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss = token_reward_model_loss(scores, mask, torch.tensor([1.0, 0.0]))
    # row 0: mean 2, label 1: -log sigmoid(2);  row 1: mean 0, label 0: log 2
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-2.0)), math.log(2.0)])
