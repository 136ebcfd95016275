"""SFT: supervised fine-tuning on step-by-step solutions, in the same token layout the RL agents train on.

Data, in order of preference: explicit examples passed to ``learn(examples=...)`` (recorded trajectories), the
``data_files`` (recorder files or OREO rows; multi-turn chats such as ALFWorld games are trained on their
assistant turns only, the game's text is never a target), the env's worked solutions
(``env.unwrapped.problem.solution``, e.g. ``openr/Arithmetic-v0`` writes them), or, with
``rejection_sampling=True``, the policy's own correct episodes (rejection-sampling fine-tuning, the baseline OREO
and OREAL compare against). The loss is the mean negative log-likelihood of the solution tokens (prompt masked),
with an EOS after the last step so the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.rl.forward import policy_forward
from agents.rl.rollout import TokenizedEpisode, episode_to_tokens, make_token_batch
from agents.rl.trainer import TrainableAgent, TrainConfig

__all__ = ["SFT", "SFTConfig", "SFTExample"]


@dataclass
class SFTConfig(TrainConfig):
    """SFT hyper-parameters."""

    learning_rate: float = 5e-5
    """AdamW learning rate."""
    batch_size: int = 16
    """Examples per optimizer step (accumulated over ``micro_batch_size`` chunks)."""
    rejection_sampling: bool = False
    """Train on the policy's own correct samples instead of reference solutions."""
    samples_per_problem: int = 4
    """Samples drawn per problem in rejection-sampling mode."""
    temperature: float = 1.0
    """Sampling temperature in rejection-sampling mode."""
    data_files: tuple[str, ...] = ()
    """JSONL files to train on (recorder records or OREO rows, read by ``agents.rl.oreo_data``)."""
    data_min_reward: float | None = None
    """Keep only ``data_files`` trajectories with reward R >= this (1.0: won games only, i.e. rejection sampling
    on recorded rollouts); None keeps all."""


@dataclass
class SFTExample:
    """One training example: a problem and its solution steps."""

    question: str
    steps: list[str]
    instruction: str = ""
    conversation: list[dict[str, str]] | None = None
    """A multi-turn chat instead (``{"role", "content"}`` messages): only its assistant turns are trained on."""


class SFT(TrainableAgent):
    """Supervised fine-tuning (and rejection-sampling fine-tuning) of the policy."""

    config_class = SFTConfig
    config: SFTConfig

    def reference_examples(self, count: int) -> list[SFTExample]:
        """Worked solutions of ``count`` fresh problems from the env (its ``problem.solution``)."""
        vec_env = self._data_env()
        examples: list[SFTExample] = []
        while len(examples) < count:
            _, infos = vec_env.reset(seed=self.next_problem_seeds(vec_env.num_envs))
            for state, instruction in zip(vec_env.call("get_state"), infos["instruction"]):
                problem = state["problem"]
                if problem.solution:
                    examples.append(
                        SFTExample(problem.question, problem.solution.split("\n\n"), str(instruction))
                    )
            if not examples and len(examples) < count:
                raise ValueError(
                    "the env's problems have no worked solutions: pass examples= or rejection_sampling"
                )
        return examples[:count]

    def sampled_examples(self, count: int) -> list[SFTExample]:
        """The policy's correct episodes on fresh problems (may return fewer than ``count``)."""
        k = self.config.samples_per_problem
        episodes = self.collect(max(1, count // k), k)
        return [SFTExample(e.question, e.steps, e.instruction) for e in episodes if e.correct][:count]

    def _data_env(self):
        if not hasattr(self, "_sft_vec_env"):
            self._sft_vec_env = self.vec_env(min(16, self.config.batch_size))
        return self._sft_vec_env

    def file_examples(self) -> list[SFTExample]:
        """The ``data_files`` trajectories (with R >= ``data_min_reward``) as examples."""
        from agents.rl.oreo_data import load_trajectories

        floor = self.config.data_min_reward
        examples = [
            SFTExample(t.question, list(t.steps), t.instruction, t.conversation)
            for t in load_trajectories(list(self.config.data_files))
            if floor is None or t.reward >= floor
        ]
        if not examples:
            raise ValueError(f"no trajectories with reward >= {floor} in {list(self.config.data_files)}")
        return examples

    def _tokens(self, example: SFTExample) -> tuple[TokenizedEpisode, list[int]]:
        """Prompt and response ids of one example and the loss mask over the response (1: a policy token)."""
        if example.conversation is not None:
            from agents.rl.oreo_data import conversation_row

            row = conversation_row(
                self.tokenizer, example.conversation, "step", self.config.max_response_tokens
            )
            return TokenizedEpisode(row.context, row.response, []), row.action
        item = episode_to_tokens(
            self.tokenizer,
            self.engine,
            example.question,
            example.instruction,
            example.steps,
            "eos",
            delimiter=getattr(self.engine, "step_delimiter", "\n\n"),
            max_response_tokens=self.config.max_response_tokens,
        )
        return item, [1] * len(item.response_ids)

    def loss_on(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        """One optimizer step of next-token cross-entropy on the solution (policy) tokens."""
        tokenized = [self._tokens(ex) for ex in examples]
        batch = make_token_batch([item for item, _ in tokenized], self.pad_token_id)
        loss_mask = torch.zeros_like(batch.response_mask)
        for row, (_, mask) in enumerate(tokenized):
            loss_mask[row, : len(mask)] = torch.tensor(mask, dtype=loss_mask.dtype)
        total_tokens = float(loss_mask.sum().clamp(min=1.0))
        nll_sum = 0.0
        for rows in self.micro_batches(len(batch)):
            sub = batch.select(rows)
            with self.autocast():
                out = policy_forward(self.model, sub, chunk_size=self.config.chunk_size)
            nll = -(out.logprobs * loss_mask[rows]).sum()
            (nll / total_tokens).backward()
            nll_sum += float(nll.detach())
        grad_norm = self.optimizer_step()
        self.sync_engine()
        return {
            "train/loss": nll_sum / total_tokens,
            "train/grad_norm": grad_norm,
            "train/tokens": total_tokens,
        }

    def learn(
        self,
        total_steps: int,
        callback=None,
        examples: Sequence[SFTExample] | None = None,
        reset_num_timesteps: bool = False,
    ) -> SFT:
        """``total_steps`` optimizer steps of ``batch_size`` examples each (cycling through ``examples`` if given)."""
        self.model.train()
        pool = list(examples) if examples is not None else None
        if pool is None and self.config.data_files:
            pool = self.file_examples()

        def one_update() -> tuple[dict[str, float], int]:
            size = self.config.batch_size
            if pool is not None:
                chosen = [pool[int(i)] for i in self._problem_rng.integers(0, len(pool), size=size)]
            elif self.config.rejection_sampling:
                chosen = self.sampled_examples(size)
                if not chosen:
                    return {**self.last_rollout_stats, "train/examples": 0.0}, 0
            else:
                chosen = self.reference_examples(size)
            metrics = self.loss_on(chosen)
            metrics["train/examples"] = float(len(chosen))
            if self.config.rejection_sampling:
                metrics.update(self.last_rollout_stats)
            return metrics, sum(len(ex.steps) for ex in chosen)

        with torch.enable_grad():
            return self._learn_loop(total_steps, callback, one_update, reset_num_timesteps)
