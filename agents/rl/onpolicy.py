"""The parts GRPO and PPO share: the KL reference policy, tokenising a batch of episodes and no-grad passes."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agents.rl.forward import PolicyOutput, policy_forward, prompt_groups
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

    def _build_extra_modules(self) -> None:
        self.reference = None
        if self.config.kl_coef > 0 and self.config.lora_r == 0:
            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

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

    @torch.no_grad()
    def no_grad_forward(self, batch: TokenBatch, *, reference: bool = False, value_head=None) -> PolicyOutput:
        """Log-probs (and values) of the whole batch without gradients, micro-batch by micro-batch (rows of
        similar length together, so little padding is computed)."""
        shape, device = batch.response_mask.shape, batch.response_mask.device
        logprobs = torch.zeros(shape, device=device)
        values = torch.zeros(shape, device=device) if value_head is not None and not reference else None
        was_training = self.model.training
        self.model.eval()
        try:
            for rows in self.length_sorted_chunks(batch, list(range(len(batch)))):
                sub = batch.select(rows)
                with self.autocast():
                    if reference:
                        out = self._reference_forward(sub)
                    else:
                        out = policy_forward(
                            self.model,
                            sub,
                            chunk_size=self.config.chunk_size,
                            temperature=self.config.temperature,
                            value_head=value_head,
                        )
                logprobs[rows] = out.logprobs.float()
                if values is not None:
                    values[rows] = out.values.float()
        finally:
            self.model.train(was_training)
        return PolicyOutput(logprobs=logprobs, values=values)

    def length_sorted_chunks(self, batch: TokenBatch, rows: list[int]) -> list[list[int]]:
        """``rows`` cut into micro-batches of ``micro_batch_size``, longest first and the samples of one prompt
        next to each other: a micro-batch is padded to its longest row only, and ``policy_forward`` runs a prompt
        its rows share once. Gradients are summed over the micro-batches of a minibatch, so the grouping does
        not change the update."""
        lengths = batch.lengths.tolist()
        group_of_row = {row: index for index, group in enumerate(prompt_groups(batch)) for row in group}
        longest: dict[int, int] = {}
        for row in rows:
            group = group_of_row[row]
            longest[group] = max(longest.get(group, 0), lengths[row])
        ordered = sorted(
            rows, key=lambda row: (-longest[group_of_row[row]], group_of_row[row], -lengths[row])
        )
        step = max(1, self.config.micro_batch_size)
        return [ordered[start : start + step] for start in range(0, len(ordered), step)]

    def _reference_forward(self, batch: TokenBatch) -> PolicyOutput:
        kwargs = {"chunk_size": self.config.chunk_size, "temperature": self.config.temperature}
        if self.reference is not None:
            return policy_forward(self.reference, batch, **kwargs)
        with self.model.disable_adapter():  # LoRA: the base model is the reference
            return policy_forward(self.model, batch, **kwargs)

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
