"""Known-answer tests of OREO's losses (Wang et al. 2024, Eq. 8 and 9) on hand-computed tensors."""

import math

import pytest
import torch

from agents.rl.losses import full_vocab_kl, oreo_kl, oreo_policy_loss, oreo_step_sums, oreo_value_loss

# One trajectory of 4 action tokens in two steps (tokens 0-1 and 2-3), R = 1, beta = 0.5.
LOG_RATIO = [[0.1, 0.2, -0.3, 0.4]]
STEP_STATES = [[1.0, 0.0, 1.0, 0.0]]
VALUES = [[0.2, 9.0, 0.6, 9.0]]  # 9.0 sits on non-state tokens and must be ignored


def tensors(*rows):
    return [torch.tensor(row, dtype=torch.float32) for row in rows]


def test_step_sums_known_answer():
    log_ratio, states = tensors(LOG_RATIO, STEP_STATES)
    future, current = oreo_step_sums(log_ratio, states)
    # future: suffix sums; current: the sum over the step a token belongs to
    torch.testing.assert_close(future, torch.tensor([[0.4, 0.3, 0.1, 0.4]]))
    torch.testing.assert_close(current, torch.tensor([[0.3, 0.3, 0.1, 0.1]]))


def test_value_loss_step_level_known_answer():
    log_ratio, states, values = tensors(LOG_RATIO, STEP_STATES, VALUES)
    values.requires_grad_(True)
    log_ratio.requires_grad_(True)
    loss = oreo_value_loss(values, log_ratio, states, torch.tensor([1.0]), beta=0.5)
    # state 0: 0.2 - 1 + 0.5 * 0.4 = -0.6; state 2: 0.6 - 1 + 0.5 * 0.1 = -0.35; mean of squares
    assert loss.tolist() == pytest.approx([(0.36 + 0.1225) / 2])
    loss.sum().backward()
    # d/dV = 2 * residual / 2 states; non-state values get nothing; the log-ratios are detached
    assert values.grad[0].tolist() == pytest.approx([-0.6, 0.0, -0.35, 0.0])
    assert log_ratio.grad is None


def test_policy_loss_gradient_reaches_only_the_current_step():
    log_ratio, states, values = tensors(LOG_RATIO, STEP_STATES, VALUES)
    values.requires_grad_(True)
    log_ratio.requires_grad_(True)
    loss = oreo_policy_loss(values, log_ratio, states, torch.tensor([1.0]), beta=0.5)
    assert loss.tolist() == pytest.approx([(0.36 + 0.1225) / 2])  # same residuals as the value loss
    loss.sum().backward()
    # step 0's tokens get only state 0's residual (-0.6 * beta), step 1's only state 2's (-0.35 * beta).
    # Without the stop-gradient on later steps, tokens 2-3 would also get -0.6 * 0.5 from state 0.
    assert log_ratio.grad[0].tolist() == pytest.approx([-0.3, -0.3, -0.175, -0.175])
    assert values.grad is None


def test_token_level_known_answer():
    log_ratio = torch.tensor([[0.1, 0.2]], requires_grad=True)
    values = torch.tensor([[0.5, 0.7]], requires_grad=True)
    states = torch.ones(1, 2)
    rewards = torch.tensor([0.0])
    value_loss = oreo_value_loss(values, log_ratio, states, rewards, beta=1.0)
    # residuals 0.5 + 0.3 = 0.8 and 0.7 + 0.2 = 0.9
    assert value_loss.tolist() == pytest.approx([(0.64 + 0.81) / 2])
    value_loss.sum().backward()
    assert values.grad[0].tolist() == pytest.approx([0.8, 0.9])
    policy_loss = oreo_policy_loss(values, log_ratio, states, rewards, beta=1.0)
    policy_loss.sum().backward()
    # each token only through its own state's residual: 0.8 and 0.9 (not 0.8 + 0.9 for token 1)
    assert log_ratio.grad[0].tolist() == pytest.approx([0.8, 0.9])


def test_observation_tokens_and_padding_change_nothing():
    """A multi-turn row (observation tokens inside the response, action 0) and a padded row give the same loss
    as the bare actions; every trajectory weighs the same whatever its length."""
    action = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    states = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]])
    raw = torch.tensor([[0.1, 0.2, 5.0, 5.0, 0.3], [0.1, 0.2, 0.3, 7.0, 7.0]])
    values = torch.tensor([[0.4, 3.0, 3.0, 3.0, 0.8], [0.4, 3.0, 0.8, 3.0, 3.0]])
    rewards = torch.tensor([1.0, 1.0])
    loss = oreo_value_loss(values, raw * action, states, rewards, beta=0.5)
    # both: state A: 0.4 - 1 + 0.5 * 0.6 = -0.3; state B: 0.8 - 1 + 0.5 * 0.3 = -0.05
    expected = (0.09 + 0.0025) / 2
    assert loss.tolist() == pytest.approx([expected, expected])
    assert oreo_policy_loss(values, raw * action, states, rewards, beta=0.5).tolist() == pytest.approx(
        [expected, expected]
    )


def test_k3_regulariser_known_answer():
    logprobs = torch.log(torch.tensor([[0.5, 0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    # token 0: ratio 0.5 -> 0.5 - ln 0.5 - 1 = 0.19315; token 1: 0
    assert oreo_kl(logprobs, ref, mask).tolist() == pytest.approx([(0.5 + math.log(2) - 1) / 2], rel=1e-5)


def test_full_vocabulary_kl_known_answer():
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    ref_logits = torch.log(torch.tensor([[0.25, 0.75]]))
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.14384
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert full_vocab_kl(logits, ref_logits).tolist() == pytest.approx([expected], rel=1e-5)
    assert full_vocab_kl(ref_logits, ref_logits).tolist() == pytest.approx([0.0], abs=1e-7)
