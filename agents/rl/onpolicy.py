"""The parts GRPO and PPO share: tokenising a batch of episodes and the epoch / minibatch / micro-batch loop."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agents.rl.rollout import Episode, TokenBatch, episode_to_tokens, make_token_batch
from agents.rl.trainer import TrainableAgent, TrainConfig

__all__ = ["MicroLoss", "OnPolicyAgent", "OnPolicyConfig"]

MicroLoss = Callable[[TokenBatch, list[int], list[int]], tuple[torch.Tensor, dict[str, float]]]
"""``(micro-batch, its row indices, its minibatch's row indices) -> (loss to backward, per-token sums to log)``."""


@dataclass
class OnPolicyConfig(TrainConfig):
    """Fields GRPO and PPO share."""

    prompts_per_update: int = 8
    """Problems per policy update."""
    group_size: int = 4
    """Samples per problem (GRPO's G)."""
    epochs: int = 1
    """Passes over each batch of episodes (DeepSeekMath's mu; >1 makes the clipping matter)."""
    minibatches: int = 1
    """Optimizer steps per pass (the batch is split into this many shuffled minibatches)."""
    clip_range: float = 0.2
    """PPO/GRPO ratio clip epsilon."""
    kl_coef: float = 0.0
    """Weight of the KL to the frozen reference policy (0: no reference model is kept)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; log-probs use the same temperature so the ratio is on-policy."""
    max_new_tokens: int = 96
    """Token limit per step (per solution in ``rollout_mode="episode"``)."""


class OnPolicyAgent(TrainableAgent):
    """Collect episodes with the current policy, turn them into token batches, update; repeat."""

    config_class = OnPolicyConfig
    config: OnPolicyConfig

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    # --- batches ------------------------------------------------------------------------------------------------

    def tokenize(self, episodes: Sequence[Episode]) -> tuple[TokenBatch, list[list[int]]]:
        """The token batch and, per episode, the response index of each step's last token."""
        items = [
            episode_to_tokens(
                self.tokenizer,
                self.engine,
                e.question,
                e.instruction,
                e.steps,
                e.last_finish,
                delimiter=getattr(self.engine, "step_delimiter", "\n\n"),
                max_response_tokens=self.config.max_response_tokens,
            )
            for e in episodes
        ]
        return make_token_batch(items, self.pad_token_id), [it.step_ends for it in items]

    def minibatch_rows(self, size: int) -> list[list[int]]:
        """Shuffled row indices split into ``minibatches`` parts (torch RNG: seeded and checkpointed)."""
        order = torch.randperm(size).tolist() if self.config.minibatches > 1 else list(range(size))
        parts = max(1, min(self.config.minibatches, size))
        return [order[i::parts] for i in range(parts)]

    def optimise(self, batch: TokenBatch, micro_loss: MicroLoss) -> tuple[dict[str, float], list[float]]:
        """The PPO/GRPO optimisation loop: ``epochs`` passes, each split into shuffled ``minibatches``; every
        minibatch is one optimizer step whose gradient is accumulated over micro-batches of ``micro_batch_size``.

        ``micro_loss`` returns the micro-batch's share of its minibatch's loss (it gets the minibatch's rows to
        normalise by) and per-token sums for logging. Returns those sums divided by the response tokens seen, and
        the pre-clip gradient norm of every optimizer step.
        """
        sums: dict[str, float] = defaultdict(float)
        counted_tokens, grad_norms = 0.0, []
        for _ in range(self.config.epochs):
            for rows in self.minibatch_rows(len(batch)):
                for sub_rows in self.length_sorted_chunks(batch, rows):
                    sub = batch.select(sub_rows)
                    loss, stats = micro_loss(sub, sub_rows, rows)
                    loss.backward()
                    for name, value in stats.items():
                        sums[name] += value
                    counted_tokens += float(sub.response_mask.sum())
                grad_norms.append(self.optimizer_step())
        denominator = max(counted_tokens, 1.0)
        return {name: value / denominator for name, value in sums.items()}, grad_norms

    def learn(self, total_steps: int, callback=None, reset_num_timesteps: bool = False) -> OnPolicyAgent:
        """Run ``total_steps`` policy updates (each: collect, then optimise); callbacks may stop early."""
        self.model.train()
        return self._learn_loop(total_steps, callback, self.update, reset_num_timesteps)

    def update(self) -> tuple[dict[str, float], int]:
        raise NotImplementedError
