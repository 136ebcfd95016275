"""Start a Stable-Baselines3 policy at a demonstrator's decisions before RL (behaviour cloning, DQfD's margin loss).

Why: on the candidate-choice view (``wrappers.CandidateChoice``) a hand-written rule is a strong demonstrator, and RL
from a random initialisation either settles on a weaker rule (Arithmetic) or never sees a win to learn from (ALFWorld,
docs/sb3.md). Cloning the rule first makes RL a refinement of it: the policy starts where the rule is, the critic or
the Q-values start at the rule's own returns, and early stopping on validation problems can keep the clone when RL
does not improve on it.

- Actor-critic policies (PPO, A2C): the negative log-likelihood of the demonstrator's action plus ``value_coef`` times
  the squared error of the value against the demonstrator's discounted return (behaviour cloning with a Monte-Carlo
  critic).
- Q-policies (DQN): the large-margin classification loss of DQfD (Hester et al. 2018, "Deep Q-learning from
  Demonstrations", Eq. 2 / J_E), ``max_a [Q(s, a) + l(a_E, a)] - Q(s, a_E)`` with ``l = margin`` for ``a != a_E``,
  plus the squared error of ``Q(s, a_E)`` against the demonstrator's return (in place of DQfD's n-step TD terms:
  the demonstrator's returns are known exactly here). The target net is synchronised afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["Demonstrations", "clone_into", "discounted_returns", "large_margin_loss"]


@dataclass
class Demonstrations:
    """``observations (N, D)``, the demonstrator's ``actions (N,)`` and the discounted ``returns (N,)`` from each
    state on under the demonstrator."""

    observations: np.ndarray
    actions: np.ndarray
    returns: np.ndarray

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.int64)
        self.returns = np.asarray(self.returns, dtype=np.float32)
        n = len(self.observations)
        if n == 0:
            raise ValueError("no demonstrations to clone (the demonstrator played no state)")
        if len(self.actions) != n or len(self.returns) != n:
            raise ValueError(
                f"observations ({n}), actions ({len(self.actions)}) and returns ({len(self.returns)}) differ in length"
            )


def discounted_returns(rewards: list[float], gamma: float) -> list[float]:
    """``G_t = r_t + gamma * G_{t+1}`` for one episode's rewards."""
    returns, running = [], 0.0
    for reward in reversed(rewards):
        running = float(reward) + gamma * running
        returns.append(running)
    return returns[::-1]


def large_margin_loss(q_values: torch.Tensor, actions: torch.Tensor, margin: float) -> torch.Tensor:
    """DQfD's J_E (Hester et al. 2018, Eq. 2), mean over the batch: ``max_a [Q(s,a) + margin * (a != a_E)] - Q(s,a_E)``.

    Zero exactly when the demonstrator's action beats every other by at least ``margin``."""
    penalty = torch.full_like(q_values, float(margin))
    penalty.scatter_(1, actions.unsqueeze(1), 0.0)
    chosen = q_values.gather(1, actions.unsqueeze(1)).squeeze(1)
    return ((q_values + penalty).max(dim=1).values - chosen).mean()


def clone_into(
    model: Any,
    demonstrations: Demonstrations,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    value_coef: float = 0.5,
    margin: float = 0.8,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``model.policy`` (an SB3 PPO / A2C / DQN model) to the demonstrations; returns the final epoch's mean
    losses and the share of demonstrated states where the deterministic policy now takes the demonstrator's action."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    policy = model.policy
    device = policy.device
    observations = torch.as_tensor(demonstrations.observations, device=device)
    actions = torch.as_tensor(demonstrations.actions, device=device)
    returns = torch.as_tensor(demonstrations.returns, device=device)
    actor_critic = isinstance(policy, ActorCriticPolicy)
    parameters = policy.parameters() if actor_critic else model.q_net.parameters()
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    totals: dict[str, float] = {}
    for _ in range(epochs):
        totals = {"action_loss": 0.0, "value_loss": 0.0}
        batches = torch.randperm(len(actions), generator=generator).split(batch_size)
        for index in batches:
            if actor_critic:
                values, log_prob, _ = policy.evaluate_actions(observations[index], actions[index])
                action_loss = -log_prob.mean()
                value_loss = F.mse_loss(values.flatten(), returns[index])
            else:
                q_values = model.q_net(observations[index])
                action_loss = large_margin_loss(q_values, actions[index], margin)
                chosen = q_values.gather(1, actions[index].unsqueeze(1)).squeeze(1)
                value_loss = F.mse_loss(chosen, returns[index])
            optimizer.zero_grad()
            (action_loss + value_coef * value_loss).backward()
            optimizer.step()
            totals["action_loss"] += action_loss.item() / len(batches)
            totals["value_loss"] += value_loss.item() / len(batches)
    if not actor_critic:
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    policy.set_training_mode(False)
    with torch.no_grad():
        predicted = policy._predict(observations, deterministic=True)
    totals["agreement"] = float((predicted.flatten() == actions).float().mean())
    return totals
