"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath, eq. 3 and 4).

For each problem, G episodes are sampled; each episode's advantage is its reward normalised within the group, so
no critic is needed. The loss per token is PPO's clipped surrogate with that advantage plus beta times the k3
estimate of KL(pi_theta || pi_ref). With ``process_rewards`` the env's per-step rewards (e.g. from a PRM reward
wrapper) are normalised instead and each token gets the sum of the normalised rewards of its step and the later
ones (DeepSeekMath section 4.1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.rl.forward import policy_forward
from agents.rl.losses import clipped_policy_loss, group_normalized_advantages, k3_kl, process_group_advantages
from agents.rl.onpolicy import OnPolicyAgent, OnPolicyConfig

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
    loss_aggregation: str = "token"
    """"token": every response token of the batch weighs the same (DAPO, TRL's default); "sequence": mean over
    each sequence's tokens, then over sequences (DeepSeekMath eq. 3)."""
    process_rewards: bool = False
    """Use per-step rewards with process-supervision advantages instead of the episode's total reward."""
    skip_zero_advantage: bool = True
    """When kl_coef is 0, leave out sequences whose advantage is 0 everywhere (they carry no gradient)."""


def grpo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    clip_range: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSeekMath eq. 3, per token, negated: -min(r A, clip(r) A) + beta * KL_k3 (eq. 4)."""
    policy_loss, was_clipped = clipped_policy_loss(logprobs, old_logprobs, advantages, clip_range)
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    loss = policy_loss + kl_coef * kl
    return loss, {"policy_loss": policy_loss, "kl": kl, "clipped": was_clipped}


class GRPO(OnPolicyAgent):
    """Group relative policy optimisation with outcome (or per-step) rewards from the env."""

    config_class = GRPOConfig
    config: GRPOConfig

    def advantages(self, episodes, step_ends: list[list[int]], width: int) -> torch.Tensor:
        """(B, R) per-token advantages."""
        G = self.config.group_size
        if self.config.process_rewards:
            per_step = process_group_advantages([e.rewards_per_step() for e in episodes], G)
            out = torch.zeros(len(episodes), width)
            for row, (values, ends) in enumerate(zip(per_step, step_ends)):
                start = 0
                for value, end in zip(values, ends):
                    out[row, start : end + 1] = value
                    start = end + 1
            return out
        rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
        if self.config.scale_rewards:
            per_episode = group_normalized_advantages(rewards, G)
        else:
            per_episode = (rewards.view(-1, G) - rewards.view(-1, G).mean(1, keepdim=True)).view(-1)
        return per_episode[:, None].expand(-1, width).clone()

    def update(self) -> tuple[dict[str, float], int]:
        cfg = self.config
        episodes = self.collect(cfg.prompts_per_update, cfg.group_size)
        batch, step_ends = self.tokenize(episodes)
        mask = batch.response_mask
        advantages = self.advantages(episodes, step_ends, mask.shape[1]) * mask
        informative = [row for row in range(len(batch)) if bool(advantages[row].abs().sum() > 0)]
        keep = informative if cfg.kl_coef == 0 and cfg.skip_zero_advantage else list(range(len(batch)))
        metrics = dict(self.last_rollout_stats)
        metrics["train/zero_advantage_fraction"] = 1.0 - len(informative) / len(batch)
        env_steps = sum(len(e.steps) for e in episodes)
        if not keep:
            return metrics, env_steps
        batch, advantages = batch.select(keep), advantages[keep]
        mask = batch.response_mask
        reuse_old = cfg.epochs == 1 and cfg.minibatches == 1  # ratio is 1 at the only step: old = current
        old = None if reuse_old else self.no_grad_forward(batch).logprobs
        ref = self.no_grad_forward(batch, reference=True).logprobs if cfg.kl_coef > 0 else None

        def micro_loss(sub, sub_rows: list[int], rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
            sub_mask = sub.response_mask
            with self.autocast():
                out = policy_forward(
                    self.model, sub, chunk_size=cfg.chunk_size, temperature=cfg.temperature, with_entropy=True
                )
            old_lp = out.logprobs.detach() if old is None else old[sub_rows]
            ref_lp = None if ref is None else ref[sub_rows]
            loss_tokens, parts = grpo_token_loss(
                out.logprobs, old_lp, ref_lp, advantages[sub_rows], cfg.clip_range, cfg.kl_coef
            )
            if cfg.loss_aggregation == "sequence":
                per_sequence = (loss_tokens * sub_mask).sum(1) / sub_mask.sum(1).clamp(min=1.0)
                loss = per_sequence.sum() / len(rows)
            else:
                loss = (loss_tokens * sub_mask).sum() / mask[rows].sum().clamp(min=1.0)
            stats = {
                name: float((parts[name].detach() * sub_mask).sum())
                for name in ("policy_loss", "kl", "clipped")
            }
            stats["entropy"] = float((out.entropy * sub_mask).sum())
            return loss, stats

        means, grad_norms = self.optimise(batch, micro_loss)
        self.sync_engine()
        metrics.update(
            {
                "train/policy_loss": means["policy_loss"],
                "train/kl": means["kl"],
                "train/clip_fraction": means["clipped"],
                "train/entropy": means["entropy"],
                "train/grad_norm": float(np.mean(grad_norms)),
                "train/learning_rate": self.optimizer.param_groups[0]["lr"],
                "train/response_tokens": float(mask.sum()) / len(batch),
            }
        )
        return metrics, env_steps
