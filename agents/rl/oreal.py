"""OREAL: outcome-reward RL (Lyu et al. 2025, "Exploring the Limit of Outcome Reward for Learning Mathematical
Reasoning"), as the paper and its released training code (InternLM/OREAL ``train_oreal.py``) define it.

Per problem, k samples are judged right (+1) or wrong (-1); advantages are RLOO, A_i = r_i - mean_{j != i} r_j.
Problems whose samples all agree carry no signal and are dropped; by default one correct and one incorrect sample
per problem are kept (the released ``filter_trajectory``). The loss, per token:

    correct samples:   positive_loss = -A * w+ * log pi(y_t)                       (behaviour cloning, weight 1)
    incorrect samples: negative_loss = -A * w- * exp(log pi(y_t) - sg(log pi(y_t)))   (reshaped, weight 0.5)
    every sample:      kl            = kl_coef * k3(pi, pi_ref)

each term averaged over its own tokens (correct tokens, incorrect tokens, all tokens), as the released code does.
The token weights w+ / w- are 1, or, with ``token_reward_model=True``, come from a scalar head on a copy of the
policy trained with BCE of its sequence-mean score against the outcome: p_t = sigmoid(cumulative mean of the
scores), w+ = clamp((p_t - 0.5) / 0.5, 0, 1), w- = clamp((0.5 - p_t) / 0.5, 0, 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from agents.rl.forward import PolicyOutput, response_scores
from agents.rl.losses import (
    oreal_kl_penalty,
    oreal_negative_loss,
    oreal_positive_loss,
    oreal_token_weights,
    rloo_advantages,
    token_reward_model_loss,
)
from agents.rl.onpolicy import OnPolicyAgent, OnPolicyConfig, Prepared
from agents.rl.rollout import RolloutBatch

__all__ = ["OREAL", "OREALConfig", "oreal_keep_mask"]


@dataclass
class OREALConfig(OnPolicyConfig):
    """OREAL hyper-parameters (released configuration where it applies; k smaller on a CPU)."""

    group_size: int = 16
    """k: samples per problem (``prompt_repeat_k``)."""
    kl_coef: float = 0.01
    """Weight of the k3 KL to the reference on every sample (``kl_coef``, ``kl_type="unbias"``)."""
    keep_one_pair: bool = True
    """Keep one random correct and one random incorrect sample per problem (``filter_trajectory``); False keeps
    every sample of the problems whose samples disagree."""
    positive_loss_weight: float = 1.0
    """Factor of the behaviour-cloning term (``positive_loss_factor``)."""
    negative_loss_weight: float = 0.5
    """Factor of the reshaped negative term (``negative_loss_factor``)."""
    positive_times_advantage: bool = True
    """Scale the behaviour cloning by the RLOO advantage (``pos_mult_adv``)."""
    token_reward_model: bool = False
    """Train a token-level reward model (a scalar head on a copy of the policy) and weight tokens by it."""
    reward_model_learning_rate: float = 2e-6
    """Learning rate of the token-level reward model (``token_level_rm_lr``)."""
    weight_threshold: float = 0.5
    """Threshold of the token weights (``correct_threshold`` / ``incorrect_threshold``)."""
    reward_model_only_updates: int = 0
    """First updates that train only the reward model, the policy frozen (released: 10, ``actor_freeze_steps``)."""
    loss_aggregation: str = "sum"
    """OREAL's terms carry their own normalisers (per-class token means): keep ``"sum"``."""


def oreal_keep_mask(correct: torch.Tensor, group_size: int, keep_one_pair: bool) -> torch.Tensor:
    """``(N,)`` bool: the samples OREAL trains on. Groups whose samples all agree are dropped; with
    ``keep_one_pair`` one correct and one incorrect sample per remaining group are chosen at random (torch RNG)."""
    groups = correct.bool().view(-1, group_size)
    keep = torch.zeros_like(groups)
    for index, group in enumerate(groups):
        if bool(group.all()) or not bool(group.any()):
            continue
        if not keep_one_pair:
            keep[index] = True
            continue
        for wanted in (True, False):
            candidates = (group == wanted).nonzero().view(-1)
            keep[index, candidates[torch.randint(len(candidates), (1,))]] = True
    return keep.view(-1)


class OREAL(OnPolicyAgent):
    """OREAL with outcome rewards from the env's judger and, optionally, a token-level reward model."""

    config_class = OREALConfig
    config: OREALConfig

    def _build_extra_modules(self) -> None:
        super()._build_extra_modules()
        if self.config.loss_aggregation != "sum":
            raise ValueError("OREAL's terms are normalised per class: loss_aggregation must be 'sum'")
        if self.config.group_size < 2:
            raise ValueError("OREAL needs group_size >= 2 (RLOO leaves one sample out)")
        self.reward_model: torch.nn.Module | None = None
        if self.config.token_reward_model:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            backbone = copy.deepcopy(base).train()
            head = torch.nn.Linear(base.config.hidden_size, 1, bias=False)
            with torch.no_grad():  # released code: the score is the LM head's logit of token id 0
                head.weight.copy_(base.get_output_embeddings().weight[:1].float())
            self.reward_model = torch.nn.ModuleDict({"backbone": backbone, "head": head})

    def parameter_groups(self) -> list[dict]:
        groups = super().parameter_groups()
        if self.reward_model is not None:
            groups.append(
                {
                    "params": list(self.reward_model.parameters()),
                    "lr": self.config.reward_model_learning_rate,
                }
            )
        return groups

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        modules = super().checkpoint_modules()
        if self.reward_model is not None:
            modules["reward_model"] = self.reward_model
        return modules

    def train_reward_model(self, rollout: RolloutBatch, rows: list[int], correct: torch.Tensor):
        """One BCE pass of the token-level reward model on ``rows`` (gradients accumulate until the optimizer
        step); returns the ``(B, R)`` detached scores and the mean loss."""
        mask = rollout.tokens.response_mask
        scores = torch.zeros(mask.shape)
        total = 0.0
        for sub_rows in self.length_sorted_chunks(rollout.tokens, rows):
            sub = rollout.tokens.select(sub_rows)
            with self.autocast():
                sub_scores = response_scores(self.reward_model["backbone"], sub, self.reward_model["head"])
            loss = token_reward_model_loss(sub_scores, sub.response_mask, correct[sub_rows]).sum() / len(rows)
            loss.backward()
            total += float(loss.detach())
            scores[sub_rows] = sub_scores.detach()
        return scores, total

    def prepare(self, rollout: RolloutBatch) -> Prepared:
        """Rewards +-1, RLOO advantages, the kept samples, token weights and each term's normaliser."""
        cfg, mask = self.config, rollout.tokens.response_mask
        correct_episode = torch.tensor([float(e.correct) for e in rollout.episodes])
        advantages_episode = rloo_advantages(2.0 * correct_episode - 1.0, cfg.group_size)
        keep_episode = oreal_keep_mask(correct_episode, cfg.group_size, cfg.keep_one_pair)
        keep = torch.tensor([bool(keep_episode[e]) for e in rollout.row_episode])
        correct = torch.tensor([float(correct_episode[e]) for e in rollout.row_episode])
        advantages = rollout.per_episode(advantages_episode)
        metrics = {"train/kept_fraction": float(keep_episode.float().mean())}
        positive_weights, negative_weights = mask.clone(), mask.clone()
        rows = keep.nonzero().view(-1).tolist()
        if self.reward_model is not None and rows:
            scores, rm_loss = self.train_reward_model(rollout, rows, correct)
            positive_weights, negative_weights = oreal_token_weights(scores, mask, cfg.weight_threshold)
            metrics["train/reward_model_loss"] = rm_loss
        if self.reward_model is not None and self.num_updates < cfg.reward_model_only_updates:
            keep = torch.zeros_like(keep)  # the released actor_freeze_steps: only the reward model learns
        is_positive = (correct[:, None] * mask) * keep[:, None]
        is_negative = ((1.0 - correct[:, None]) * mask) * keep[:, None]
        all_kept = mask * keep[:, None]
        tensors = {
            "positive_advantages": (advantages if cfg.positive_times_advantage else mask) * is_positive,
            "negative_advantages": advantages * is_negative,
            "positive_weights": positive_weights,
            "negative_weights": negative_weights,
            "positive_norm": is_positive * cfg.positive_loss_weight / is_positive.sum().clamp(min=1.0),
            "negative_norm": is_negative * cfg.negative_loss_weight / is_negative.sum().clamp(min=1.0),
            "kl_norm": all_kept / all_kept.sum().clamp(min=1.0),
        }
        return Prepared(tensors, informative=keep, metrics=metrics, trainable=keep)

    def token_loss(
        self, out: PolicyOutput, data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs = out.logprobs
        positive = oreal_positive_loss(logprobs, data["positive_advantages"], data["positive_weights"])
        negative = oreal_negative_loss(logprobs, data["negative_advantages"], data["negative_weights"])
        terms = {
            "positive_loss": positive * data["positive_norm"],
            "negative_loss": negative * data["negative_norm"],
        }
        if "ref_logprobs" in data:
            kl = oreal_kl_penalty(logprobs, data["ref_logprobs"], self.config.kl_coef)
            terms["kl"] = kl * data["kl_norm"]
        return sum(terms.values()), terms
