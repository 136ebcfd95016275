"""The on-policy learner template (GRPO, PPO, OREAL), shaped like Stable-Baselines3's ``OnPolicyAlgorithm``.

``OnPolicyAgent.update`` owns the loop: collect episodes with the current policy (any engine: in-process
transformers, or vLLM with a weight push after each update) -> tokenise them into the ids the engine sampled ->
``prepare`` (the algorithm's advantages / returns / weights) -> optimise the algorithm's ``token_loss`` over
epochs x minibatches x micro-batches, aggregated by ``losses.aggregate_token_loss`` -> push the weights to the
engine -> log. An algorithm is its config, its ``prepare`` and its ``token_loss``; the metric keys are written here
once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from agents.rl.forward import PolicyOutput, policy_forward
from agents.rl.losses import aggregate_token_loss, clip_fraction
from agents.rl.rollout import Episode, RolloutBatch, make_rollout_batch
from agents.rl.trainer import TrainableAgent, TrainConfig

__all__ = ["OnPolicyAgent", "OnPolicyConfig", "Prepared"]


@dataclass
class OnPolicyConfig(TrainConfig):
    """Fields GRPO, PPO and OREAL share."""

    prompts_per_update: int = 8
    """Problems per policy update."""
    group_size: int = 4
    """Samples per problem (GRPO's G, OREAL's k)."""
    epochs: int = 1
    """Passes over each batch of episodes (DeepSeekMath's mu; >1 makes the clipping matter)."""
    minibatches: int = 1
    """Optimizer steps per pass (the batch is split into this many shuffled minibatches)."""
    clip_range: float = 0.2
    """PPO/GRPO ratio clip epsilon (also the threshold of ``train/clip_fraction``)."""
    kl_coef: float = 0.0
    """Weight of the KL to the frozen reference policy (0: no reference model is kept)."""
    loss_aggregation: str = "token"
    """How per-token losses become one number (``losses.aggregate_token_loss``): ``"token"`` (every token of the
    minibatch weighs the same: DAPO, TRL, SB3), ``"sequence"`` (mean per sequence, then over sequences:
    DeepSeekMath eq. 3) or ``"constant"`` (sum / (sequences x max_response_tokens): Dr. GRPO)."""
    skip_zero_advantage: bool = True
    """When kl_coef is 0, leave out sequences ``prepare`` gives no signal (they carry no gradient)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; log-probs use the same temperature so the ratio is on-policy."""
    max_new_tokens: int = 96
    """Token limit per step (per solution in ``rollout_mode="episode"``)."""


@dataclass
class Prepared:
    """What ``prepare`` hands the optimise stage: ``(B, R)`` per-token tensors the loss reads (``advantages``,
    ``returns``, ``weights`` ...), which rows carry signal, and metrics to log."""

    tensors: dict[str, torch.Tensor]
    informative: torch.Tensor
    """``(B,)`` bool: rows with a non-zero learning signal (the rest are skipped when kl_coef is 0)."""
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: torch.Tensor | None = None
    """``(B,)`` bool: the rows to optimise whatever kl_coef is (OREAL's kept samples); None: as above."""


class OnPolicyAgent(TrainableAgent):
    """Collect -> tokenise -> prepare -> optimise -> sync -> log, one policy update at a time."""

    config_class = OnPolicyConfig
    config: OnPolicyConfig
    uses_ratio_clipping = False
    """True for algorithms whose loss clips the ratio (GRPO, PPO): they log ``train/clip_fraction``."""
    value_head: torch.nn.Module | None = None
    """A critic evaluated on the policy's forward pass (PPO); its values reach ``token_loss`` as ``out.values``."""

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def critic_for_loss(self) -> torch.nn.Module | None:
        """The value head the loss's forward pass runs (``value_head`` unless a subclass wraps it)."""
        return self.value_head

    # --- the algorithm's part -----------------------------------------------------------------------------------

    def prepare(self, rollout: RolloutBatch) -> Prepared:
        """Per-token advantages / returns / weights of the batch (the algorithm's estimator)."""
        raise NotImplementedError

    def token_loss(
        self, out: PolicyOutput, data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, R)`` loss per token and its named terms (each logged as ``train/<name>``: its share of the loss,
        aggregated as the loss is).

        ``data`` holds ``prepare``'s tensors for these rows plus ``old_logprobs`` (the behaviour policy's,
        detached) and, with a reference, ``ref_logprobs``."""
        raise NotImplementedError

    # --- stages -------------------------------------------------------------------------------------------------

    def tokenize(self, episodes: Sequence[Episode]) -> RolloutBatch:
        """The ids the engine sampled and the prompt ids it conditioned each step on (``episode_rows``)."""
        return make_rollout_batch(episodes, self.pad_token_id, self.config.max_response_tokens)

    def minibatch_rows(self, rows: list[int]) -> list[list[int]]:
        """``rows`` shuffled and split into ``minibatches`` parts (torch RNG: seeded and checkpointed)."""
        if self.config.minibatches > 1:
            rows = [rows[i] for i in torch.randperm(len(rows)).tolist()]
        parts = max(1, min(self.config.minibatches, len(rows)))
        return [rows[i::parts] for i in range(parts)]

    def _sequence_tokens(self, rollout: RolloutBatch) -> torch.Tensor:
        """``(B, R)``: each token's episode length in tokens (for ``"sequence"`` aggregation)."""
        lengths = rollout.episode_mask.sum(1)
        return rollout.per_episode(lengths)

    def optimise(
        self, rollout: RolloutBatch, rows: list[int], data: dict[str, torch.Tensor]
    ) -> tuple[dict[str, float], list[float]]:
        """``epochs`` passes over ``rows``, each split into shuffled ``minibatches``; a minibatch is one optimizer
        step whose gradient is accumulated over micro-batches of ``micro_batch_size`` (rows of similar length
        and of one prompt together). Returns the logged values (each loss term's share of the loss averaged over
        optimizer steps; entropy, approx_kl, clip_fraction and, at temperature 1, sampler_kl (the engine's sampling
        distribution against the behaviour policy's, from the engine's log-probs: how off-policy a separate engine
        such as vLLM in bf16 makes the data) as token means) and each step's gradient norm."""
        cfg = self.config
        batch, mask = rollout.tokens, rollout.tokens.response_mask
        sequence_tokens = self._sequence_tokens(rollout)
        shares: dict[str, float] = defaultdict(float)
        per_token: dict[str, float] = defaultdict(float)
        counted, grad_norms = 0.0, []
        # engines report log-probs before temperature / top-p: comparable to the trainer's at T = 1, top-p = 1 only
        sampler_comparable = cfg.temperature == 1.0 and cfg.top_p == 1.0
        for _ in range(cfg.epochs):
            for minibatch in self.minibatch_rows(rows):
                total_tokens = float(mask[minibatch].sum())
                num_sequences = len({rollout.row_episode[row] for row in minibatch})
                for sub_rows in self.length_sorted_chunks(batch, minibatch):
                    sub = batch.select(sub_rows)
                    with self.autocast():
                        out = policy_forward(
                            self.model,
                            sub,
                            chunk_size=cfg.chunk_size,
                            temperature=cfg.temperature,
                            with_entropy=True,
                            value_head=self.critic_for_loss(),
                        )
                    sub_data = {name: tensor[sub_rows] for name, tensor in data.items()}
                    sub_data.setdefault("old_logprobs", out.logprobs.detach())
                    loss_tokens, terms = self.token_loss(out, sub_data)
                    aggregate = partial(
                        aggregate_token_loss,
                        mask=sub.response_mask,
                        mode=cfg.loss_aggregation,
                        total_tokens=total_tokens,
                        num_sequences=num_sequences,
                        sequence_tokens=sequence_tokens[sub_rows],
                        max_tokens=cfg.max_response_tokens,
                    )
                    loss = aggregate(loss_tokens)
                    loss.backward()
                    sub_mask = sub.response_mask
                    # a term's logged value is its share of the loss (aggregated like the loss), per step
                    terms = {"loss": loss_tokens, **terms}
                    for name, term in terms.items():
                        shares[name] += float(aggregate(term.detach()))
                    per_token["entropy"] += float((out.entropy * sub_mask).sum())
                    log_ratio = (out.logprobs.detach() - sub_data["old_logprobs"]) * sub_mask
                    per_token["approx_kl"] += float(((log_ratio.exp() - 1) - log_ratio).mul(sub_mask).sum())
                    if sampler_comparable:  # KL(sampler || behaviour policy), k3: e.g. vLLM bf16 vs trainer
                        gap = (sub_data["old_logprobs"] - rollout.sampled_logprobs[sub_rows]) * sub_mask
                        per_token["sampler_kl"] += float(((gap.exp() - 1) - gap).mul(sub_mask).sum())
                    if self.uses_ratio_clipping:
                        clipped = clip_fraction(
                            out.logprobs.detach(), sub_data["old_logprobs"], cfg.clip_range
                        )
                        per_token["clip_fraction"] += float((clipped * sub_mask).sum())
                    counted += float(sub_mask.sum())
                grad_norms.append(self.optimizer_step())
        means = {name: value / max(len(grad_norms), 1) for name, value in shares.items()}
        means.update({name: value / max(counted, 1.0) for name, value in per_token.items()})
        return means, grad_norms

    def update(self) -> tuple[dict[str, float], int]:
        """One policy update: collect -> tokenise -> prepare -> optimise -> sync; returns (metrics, env steps)."""
        cfg = self.config
        episodes = self.collect(cfg.prompts_per_update, cfg.group_size)
        train_started = time.perf_counter()
        env_steps = sum(len(e.step_rewards) for e in episodes)
        rollout = self.tokenize(episodes)
        prepared = self.prepare(rollout)
        metrics = {**self.last_rollout_stats, **prepared.metrics}
        informative = prepared.informative.tolist()
        metrics["train/zero_advantage_fraction"] = 1.0 - sum(informative) / max(len(informative), 1)
        metrics["train/rows_per_episode"] = len(rollout) / max(len(episodes), 1)  # 1: whole chats in one row
        if prepared.trainable is not None:
            rows = prepared.trainable.nonzero().view(-1).tolist()
        else:
            skip = cfg.kl_coef == 0 and cfg.skip_zero_advantage
            rows = [row for row, useful in enumerate(informative) if useful or not skip]
        if not rows:
            if any(p.grad is not None for group in self.optimizer.param_groups for p in group["params"]):
                self.optimizer_step()  # what prepare trained (OREAL's reward model) still steps
            return metrics, env_steps
        data = dict(prepared.tensors)
        if "old_logprobs" not in data and (cfg.epochs > 1 or cfg.minibatches > 1):
            data["old_logprobs"] = self._on_rows(rollout, rows, self.no_grad_forward)
        if self.has_reference and "ref_logprobs" not in data:
            data["ref_logprobs"] = self._on_rows(rollout, rows, self.reference_logprobs)
        means, grad_norms = self.optimise(rollout, rows, data)
        sync_started = time.perf_counter()
        self.sync_engine()
        # where an update's time goes besides time/rollout_seconds (collect): tokenise..optimise, weight push
        metrics["time/train_seconds"] = sync_started - train_started
        metrics["time/sync_seconds"] = time.perf_counter() - sync_started
        metrics.update({f"train/{name}": value for name, value in means.items()})
        metrics["train/grad_norm"] = float(np.mean(grad_norms))
        metrics["train/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/response_tokens"] = float(rollout.tokens.response_mask[rows].sum()) / len(rows)
        return metrics, env_steps

    @staticmethod
    def _on_rows(rollout: RolloutBatch, rows: list[int], forward) -> torch.Tensor:
        """``forward``'s ``(B, R)`` log-probs computed on ``rows`` only (zeros elsewhere)."""
        out = forward(rollout.tokens.select(rows))
        logprobs = out.logprobs if isinstance(out, PolicyOutput) else out
        full = torch.zeros(rollout.tokens.response_mask.shape)
        full[rows] = logprobs
        return full

    def learn(self, total_updates: int, callback=None, reset_num_timesteps: bool = False) -> OnPolicyAgent:
        """Run ``total_updates`` policy updates (each: collect, then optimise); callbacks may stop early."""
        self.model.train()
        return self._learn_loop(total_updates, callback, self.update, reset_num_timesteps)
