"""Stable-Baselines3 policies that score every candidate slot of ``wrappers.CandidateChoice`` with one shared net.

Why: the view's observation is K slots of the same features, and which slot holds the right step changes from
state to state. SB3's default ``MlpPolicy`` reads the flat ``K x F`` vector with one dense net, so it must learn the
same rule K times (once per slot) and can instead memorise which slot wins on each training problem (it over-fits a
few dozen problems, docs/sb3.md). Here one small MLP maps each slot's F features to a logit (PPO / A2C) or a
Q-value (DQN), the same weights for every slot, so the selector is permutation-equivariant: moving a candidate to
another slot moves its score with it. Every hand rule of ``experiments/train_sb3.py`` that takes the argmax of one
feature is a special case (a scorer that reads only that feature), so the learned selector can represent them all.
Padding slots (``valid = 0``) are masked out. This is the pointer-network / DRRN idea (He et al., 2016, "Deep
Reinforcement Learning with a Natural Language Action Space": score each (state, action) pair with a shared net).

Usage::

    from stable_baselines3 import PPO, DQN
    from agents.slot_policy import SlotScorerPolicy, SlotQPolicy

    PPO(SlotScorerPolicy, env)      # also A2C
    DQN(SlotQPolicy, env)
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

from wrappers.candidate_choice import FEATURES

__all__ = ["SlotQPolicy", "SlotScorer", "SlotScorerPolicy"]

_VALID = FEATURES.index("valid")
_MASKED = -1e8


class SlotScorer(nn.Module):
    """One MLP over each slot's features: ``(batch, K * F)`` observations -> ``(batch, K)`` scores.

    Padding slots get ``-1e8`` (never chosen); a row without any real slot (the all-zero observation after an
    episode ends) gets zeros, so a bootstrapped value from it stays finite.
    """

    def __init__(self, slot_features: int = len(FEATURES), hidden: int = 64) -> None:
        super().__init__()
        self.slot_features = int(slot_features)
        self.body = nn.Sequential(
            nn.Linear(self.slot_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def slots(self, observations: torch.Tensor) -> torch.Tensor:
        """The ``(batch, K, F)`` view of flat observations."""
        return observations.reshape(observations.shape[0], -1, self.slot_features)

    def hidden(self, observations: torch.Tensor) -> torch.Tensor:
        """Per-slot hidden features ``(batch, K, hidden)``."""
        return self.body(self.slots(observations))

    def mask(self, observations: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        valid = self.slots(observations)[..., _VALID] > 0
        masked = torch.where(valid, scores, torch.full_like(scores, _MASKED))
        return torch.where(valid.any(dim=-1, keepdim=True), masked, torch.zeros_like(scores))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.mask(observations, self.head(self.hidden(observations)).squeeze(-1))


class _SlotExtractor(nn.Module):
    """The actor-critic body: per-slot logits for the actor, pooled slot features for the critic."""

    def __init__(self, k: int, slot_features: int, hidden: int) -> None:
        super().__init__()
        self.actor = SlotScorer(slot_features, hidden)
        self.critic_body = nn.Sequential(nn.Linear(slot_features, hidden), nn.Tanh())
        self.slot_features = int(slot_features)
        self.latent_dim_pi = int(k)
        self.latent_dim_vf = 2 * int(hidden)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """Mean and max over the real slots of a per-slot layer (the value of a set of candidates)."""
        slots = features.reshape(features.shape[0], -1, self.slot_features)
        valid = (slots[..., _VALID] > 0).unsqueeze(-1).float()
        hidden = self.critic_body(slots)
        count = valid.sum(dim=1).clamp(min=1.0)
        mean = (hidden * valid).sum(dim=1) / count
        top = (hidden * valid - 2.0 * (1.0 - valid)).max(dim=1).values  # tanh > -1 > -2: padding never wins
        top = torch.where(valid.sum(dim=1) > 0, top, torch.zeros_like(top))
        return torch.cat([mean, top], dim=-1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class _SlotArguments:
    """The scorer's size arguments, shared by both policies (and saved with them, so ``load`` rebuilds the net)."""

    def __init__(
        self, *args: Any, slot_features: int = len(FEATURES), hidden: int = 64, **kwargs: Any
    ) -> None:
        self.slot_features = int(slot_features)
        self.slot_hidden = int(hidden)
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(slot_features=self.slot_features, hidden=self.slot_hidden)
        return data


class SlotScorerPolicy(_SlotArguments, ActorCriticPolicy):
    """PPO / A2C policy: the action distribution is a softmax over the shared scorer's per-slot logits.

    ``slot_features``: features per slot (``len(FEATURES)``); ``hidden``: width of the shared MLP.
    """

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _SlotExtractor(int(self.action_space.n), self.slot_features, self.slot_hidden)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # The scorer's logits are the action logits: no dense layer across slots on top of them.
        self.action_net = nn.Identity()
        nn.init.orthogonal_(self.mlp_extractor.actor.head.weight, gain=0.01)  # start near uniform choice
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class SlotQPolicy(_SlotArguments, DQNPolicy):
    """DQN policy: Q(s, slot) from the shared scorer (padding slots masked), for the online and target nets."""

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        q_net.q_net = SlotScorer(self.slot_features, self.slot_hidden)
        return q_net.to(self.device)
