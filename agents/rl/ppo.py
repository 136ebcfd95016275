"""PPO with step-level rewards: a value head on the policy's hidden states, GAE over tokens with each step's reward
on the step's last token, clipped policy and value losses (Schulman et al. 2017, eq. 7; GAE: Schulman et al. 2016,
eq. 16), and a per-token KL penalty to the reference policy folded into the reward (Ziegler et al. 2019).

Step rewards are whatever the env returns per step: the outcome at the last step by default, a PRM's score per
step under a PRM reward wrapper. The critic is ``rewards.prm.value_head.CausalLMWithValueHead``'s ``v_head``
(Linear(hidden -> 1), zero-initialised) evaluated on the same forward pass as the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.rl.forward import policy_forward
from agents.rl.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    masked_whiten,
    step_rewards_to_tokens,
)
from agents.rl.onpolicy import OnPolicyAgent, OnPolicyConfig

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
    policy_loss, was_clipped = clipped_policy_loss(logprobs, old_logprobs, advantages, clip_range)
    value_loss = clipped_value_loss(values, old_values, returns, value_clip_range)
    loss = policy_loss + vf_coef * value_loss
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "clipped": was_clipped}


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

    def _build_extra_modules(self) -> None:
        super()._build_extra_modules()
        from rewards.prm.value_head import CausalLMWithValueHead

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.value_head = CausalLMWithValueHead(base).v_head
        self._head_for_forward = (
            self.value_head if self.config.critic_backbone_grad else _DetachedHead(self.value_head)
        )

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

    def update(self) -> tuple[dict[str, float], int]:
        cfg = self.config
        episodes = self.collect(cfg.prompts_per_update, cfg.group_size)
        batch, step_ends = self.tokenize(episodes)
        mask = batch.response_mask
        old = self.no_grad_forward(batch, value_head=self.value_head)
        old_logprobs, old_values = old.logprobs, old.values * mask
        rewards = step_rewards_to_tokens(step_ends, [e.rewards_per_step() for e in episodes], mask.shape[1])
        kl_penalty = torch.zeros_like(rewards)
        if cfg.kl_coef > 0:
            ref_logprobs = self.no_grad_forward(batch, reference=True).logprobs
            kl_penalty = (old_logprobs - ref_logprobs) * mask
        advantages, returns = gae_advantages(
            rewards - cfg.kl_coef * kl_penalty, old_values, mask, cfg.gamma, cfg.gae_lambda
        )
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        def micro_loss(sub, sub_rows: list[int], rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
            sub_mask = sub.response_mask
            with self.autocast():
                out = policy_forward(
                    self.model,
                    sub,
                    chunk_size=cfg.chunk_size,
                    temperature=cfg.temperature,
                    with_entropy=True,
                    value_head=self._head_for_forward,
                )
            loss_tokens, parts = ppo_token_loss(
                out.logprobs,
                old_logprobs[sub_rows],
                advantages[sub_rows],
                out.values,
                old_values[sub_rows],
                returns[sub_rows],
                cfg.clip_range,
                cfg.value_clip_range,
                cfg.vf_coef,
            )
            loss = (loss_tokens * sub_mask).sum() / mask[rows].sum().clamp(min=1.0)
            stats = {
                name: float((parts[name].detach() * sub_mask).sum())
                for name in ("policy_loss", "value_loss", "clipped")
            }
            stats["entropy"] = float((out.entropy * sub_mask).sum())
            log_ratio = (out.logprobs.detach() - old_logprobs[sub_rows]) * sub_mask
            stats["approx_kl"] = float(((log_ratio.exp() - 1) - log_ratio).mul(sub_mask).sum())
            return loss, stats

        means, grad_norms = self.optimise(batch, micro_loss)
        self.sync_engine()
        metrics = dict(self.last_rollout_stats)
        metrics.update(
            {
                "train/policy_loss": means["policy_loss"],
                "train/value_loss": means["value_loss"],
                "train/explained_variance": explained_variance(old_values, returns, mask),
                "train/clip_fraction": means["clipped"],
                "train/entropy": means["entropy"],
                "train/approx_kl": means["approx_kl"],
                "train/kl": float((kl_penalty * mask).sum() / mask.sum().clamp(min=1.0)),
                "train/value_mean": float((old_values * mask).sum() / mask.sum().clamp(min=1.0)),
                "train/grad_norm": float(np.mean(grad_norms)),
                "train/learning_rate": self.optimizer.param_groups[0]["lr"],
                "train/response_tokens": float(mask.sum()) / len(batch),
            }
        )
        return metrics, sum(len(e.steps) for e in episodes)
