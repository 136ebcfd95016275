"""PPO with step-level rewards: a value head on the policy's hidden states, GAE over tokens with each step's reward
on the step's last token, clipped policy and value losses (Schulman et al. 2017, eq. 7; GAE: Schulman et al. 2016,
eq. 16), and a per-token KL penalty to the reference policy folded into the reward (Ziegler et al. 2019).

Step rewards are whatever the env returns per step: the outcome at the last step by default, a PRM's score per
step under a PRM reward wrapper. The critic is ``rewards.prm.value_head.CausalLMWithValueHead``'s ``v_head``
(Linear(hidden -> 1), zero-initialised) evaluated on the same forward pass as the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.rl.forward import PolicyOutput
from agents.rl.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    masked_mean,
    masked_whiten,
    step_rewards_to_tokens,
)
from agents.rl.onpolicy import OnPolicyAgent, OnPolicyConfig, Prepared
from agents.rl.rollout import RolloutBatch

__all__ = ["PPO", "PPOConfig", "ppo_token_loss"]


@dataclass
class PPOConfig(OnPolicyConfig):
    """PPO hyper-parameters (defaults sized for a 135M model on a CPU)."""

    group_size: int = 4
    """Samples per problem (PPO needs no groups; several samples per prompt just batch the prefill)."""
    epochs: int = 2
    """Passes over each batch."""
    minibatches: int = 2
    """Optimizer steps per pass."""
    kl_coef: float = 0.02
    """Per-token KL penalty (log pi - log pi_ref on the sampled token) subtracted from the reward."""
    gamma: float = 1.0
    """Discount per token."""
    gae_lambda: float = 0.95
    """GAE lambda. For an outcome reward with a weak critic use 1 (veRL's default): every token's advantage is
    then return - V(s_t), while 0.95 shrinks the credit of a token 20 steps before the reward to 0.36x and puts
    the critic's guess in its place (the Arithmetic runs in docs/rl.md use 1)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_clip_range: float | None = 0.2
    """Clip of the value update around the rollout's values (None: unclipped)."""
    critic_learning_rate: float = 1e-3
    """Learning rate of the value head (it starts at zero and must catch up quickly)."""
    critic_backbone_grad: bool = False
    """Let the value loss train the shared transformer too (False: the head reads detached hidden states)."""
    whiten_advantages: bool = True
    """Normalise advantages over the batch."""


def ppo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_range: float,
    value_clip_range: float | None,
    vf_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per token: clipped surrogate (PPO eq. 7, negated) + vf_coef * clipped value loss."""
    policy_loss = clipped_policy_loss(logprobs, old_logprobs, advantages, clip_range)
    value_loss = clipped_value_loss(values, old_values, returns, value_clip_range)
    loss = policy_loss + vf_coef * value_loss
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss}


class _DetachedHead(torch.nn.Module):
    """Applies the value head to detached hidden states (so the critic does not move the policy)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.detach())


class PPO(OnPolicyAgent):
    """Proximal policy optimisation with a value head, GAE and step-level rewards."""

    config_class = PPOConfig
    config: PPOConfig
    uses_ratio_clipping = True

    def _build_extra_modules(self) -> None:
        super()._build_extra_modules()
        from rewards.prm.value_head import CausalLMWithValueHead

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.value_head = CausalLMWithValueHead(base).v_head
        self._head_for_forward = (
            self.value_head if self.config.critic_backbone_grad else _DetachedHead(self.value_head)
        )

    def critic_for_loss(self) -> torch.nn.Module:
        return self._head_for_forward

    def parameter_groups(self) -> list[dict]:
        return super().parameter_groups() + [
            {"params": list(self.value_head.parameters()), "lr": self.config.critic_learning_rate}
        ]

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {**super().checkpoint_modules(), "value_head": self.value_head}

    def _save_state(self, folder) -> None:
        super()._save_state(folder)
        torch.save(self.value_head.state_dict(), folder / "value_head.pt")

    def _load_state(self, folder) -> None:
        super()._load_state(folder)
        path = folder / "value_head.pt"
        if path.is_file():
            self.value_head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def prepare(self, rollout: RolloutBatch) -> Prepared:
        """Old log-probs and values, step rewards on each step's last token minus the per-token KL penalty, then
        GAE over each episode's whole token sequence (episode layout: an episode split into several rows is one
        trajectory)."""
        cfg, mask = self.config, rollout.tokens.response_mask
        old = self.no_grad_forward(rollout.tokens, value_head=self.value_head)
        old_values = old.values * mask
        episode_mask = rollout.episode_mask
        rewards = step_rewards_to_tokens(
            rollout.step_ends, [e.step_rewards for e in rollout.episodes], episode_mask.shape[1]
        )
        kl_penalty, tensors = torch.zeros_like(mask), {}
        if cfg.kl_coef > 0:  # the reference's log-probs enter the reward (and are not computed again)
            tensors["ref_logprobs"] = self.reference_logprobs(rollout.tokens)
            kl_penalty = (old.logprobs - tensors["ref_logprobs"]) * mask
        episode_advantages, episode_returns = _gae_over_targets(
            rewards - cfg.kl_coef * rollout.to_episodes(kl_penalty),
            rollout.to_episodes(old_values),
            episode_mask,
            cfg.gamma,
            cfg.gae_lambda,
        )
        advantages, returns = rollout.to_rows(episode_advantages), rollout.to_rows(episode_returns)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        metrics = {
            "train/explained_variance": explained_variance(old_values, returns, mask),
            "train/kl": float(masked_mean(kl_penalty, mask)),
            "train/value_mean": float(masked_mean(old_values, mask)),
        }
        tensors |= {
            "advantages": advantages,
            "returns": returns,
            "old_logprobs": old.logprobs,
            "old_values": old_values,
        }
        return Prepared(tensors, informative=torch.ones(len(rollout), dtype=torch.bool), metrics=metrics)

    def token_loss(
        self, out: PolicyOutput, data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        return ppo_token_loss(
            out.logprobs,
            data["old_logprobs"],
            data["advantages"],
            out.values,
            data["old_values"],
            data["returns"],
            cfg.clip_range,
            cfg.value_clip_range,
            cfg.vf_coef,
        )


def _gae_over_targets(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each episode's target tokens only: a multi-turn chat's context tokens (the game's replies, mask
    0 inside the episode) are skipped rather than read as the episode's end."""
    if bool((mask[:, 1:] > mask[:, :-1]).any()):  # a hole: compact the targets, run GAE, scatter back
        width = int(mask.sum(1).max())
        packed = [torch.zeros((len(mask), width)) for _ in range(3)]
        where = [mask[row].nonzero().view(-1) for row in range(len(mask))]
        for row, index in enumerate(where):
            for tensor, source in zip(packed, (rewards, values, mask)):
                tensor[row, : len(index)] = source[row, index].to(tensor.dtype)
        advantages, returns = gae_advantages(packed[0], packed[1], packed[2], gamma, lam)
        out_advantages, out_returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
        for row, index in enumerate(where):
            out_advantages[row, index] = advantages[row, : len(index)].to(rewards.dtype)
            out_returns[row, index] = returns[row, : len(index)].to(rewards.dtype)
        return out_advantages, out_returns
    return gae_advantages(rewards, values, mask, gamma, lam)
