"""Known answers for ``agents.demonstrations`` (the warm start of SB3 selectors); cloning itself is tested on the
candidate-choice view in tests/test_candidate_choice.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.demonstrations import Demonstrations, discounted_returns, large_margin_loss


def test_large_margin_loss_known_answer():
    q = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.5, 0.0]])
    actions = torch.tensor([0, 0, 1])
    # row 0: max(1, 2 + 0.8, 0 + 0.8) - 1 = 1.8; row 1: max(3, 0.8, 0.8) - 3 = 0; row 2: max(1.8, 1.5, 0.8) - 1.5 = 0.3
    torch.testing.assert_close(large_margin_loss(q, actions, margin=0.8), torch.tensor((1.8 + 0.0 + 0.3) / 3))
    # Zero once the demonstrator's action leads every other by the margin.
    assert float(large_margin_loss(torch.tensor([[2.0, 1.0, 1.2]]), torch.tensor([0]), margin=0.8)) == 0.0


def test_large_margin_loss_gradient_raises_the_demonstrated_action():
    q = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    large_margin_loss(q, torch.tensor([0]), margin=0.8).backward()
    # d/dQ: +1 on the maximising wrong action, -1 on the demonstrated one, 0 elsewhere.
    assert q.grad.tolist() == [[-1.0, 1.0, 0.0]]


def test_discounted_returns_known_answer():
    assert discounted_returns([0.0, 0.0, 1.0], 0.5) == [0.25, 0.5, 1.0]
    assert discounted_returns([1.0, -1.0], 1.0) == [0.0, -1.0]
    assert discounted_returns([], 0.9) == []


def test_demonstrations_refuse_empty_or_ragged_input():
    with pytest.raises(ValueError, match="no demonstrations"):
        Demonstrations(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="differ in length"):
        Demonstrations(np.zeros((3, 4)), np.zeros(2), np.zeros(3))
