"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath, eq. 3 and 4).

For each problem, G episodes are sampled; each episode's advantage is its reward normalised within the group, so
no critic is needed. The loss per token is PPO's clipped surrogate with that advantage plus beta times the k3
estimate of KL(pi_theta || pi_ref). With ``process_rewards`` the env's per-step rewards (e.g. from a PRM reward
wrapper) are normalised instead and each token gets the sum of the normalised rewards of its step and the later
ones (DeepSeekMath section 4.1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.rl.forward import PolicyOutput
from agents.rl.losses import clipped_policy_loss, group_normalized_advantages, k3_kl, process_group_advantages
from agents.rl.onpolicy import OnPolicyAgent, OnPolicyConfig, Prepared
from agents.rl.rollout import RolloutBatch

__all__ = ["GRPO", "GRPOConfig", "grpo_token_loss"]


@dataclass
class GRPOConfig(OnPolicyConfig):
    """GRPO hyper-parameters (defaults sized for a 135M model on a CPU)."""

    group_size: int = 8
    """G: samples per problem."""
    kl_coef: float = 0.04
    """beta in DeepSeekMath eq. 3 (0 drops the reference model, as DAPO and Dr. GRPO do)."""
    scale_rewards: bool = True
    """Divide by the group's reward std (DeepSeekMath); False keeps only the mean baseline (Dr. GRPO)."""
    process_rewards: bool = False
    """Use per-step rewards with process-supervision advantages instead of the episode's total reward."""


def grpo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    clip_range: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSeekMath eq. 3, per token, negated: -min(r A, clip(r) A) + beta * KL_k3 (eq. 4). The sum over tokens
    and sequences is ``config.loss_aggregation`` (``losses.aggregate_token_loss``)."""
    policy_loss = clipped_policy_loss(logprobs, old_logprobs, advantages, clip_range)
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    loss = policy_loss + kl_coef * kl
    return loss, {"policy_loss": policy_loss, "kl": kl}


class GRPO(OnPolicyAgent):
    """Group relative policy optimisation with outcome (or per-step) rewards from the env."""

    config_class = GRPOConfig
    config: GRPOConfig
    uses_ratio_clipping = True

    def prepare(self, rollout: RolloutBatch) -> Prepared:
        """Group-normalised advantages (DeepSeekMath 4.1.2), or process-supervision ones (4.1.3)."""
        G, episodes = self.config.group_size, rollout.episodes
        if self.config.process_rewards:
            per_step = process_group_advantages([e.step_rewards for e in episodes], G)
            advantages = rollout.per_step(per_step)
        else:
            rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
            if self.config.scale_rewards:
                per_episode = group_normalized_advantages(rewards, G)
            else:  # Dr. GRPO: the group mean is the only baseline
                per_episode = (rewards.view(-1, G) - rewards.view(-1, G).mean(1, keepdim=True)).view(-1)
            advantages = rollout.per_episode(per_episode)
        return Prepared({"advantages": advantages}, informative=advantages.abs().sum(1) > 0)

    def token_loss(
        self, out: PolicyOutput, data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_token_loss(
            out.logprobs,
            data["old_logprobs"],
            data.get("ref_logprobs"),
            data["advantages"],
            self.config.clip_range,
            self.config.kl_coef,
        )
