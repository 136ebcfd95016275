"""SFT: supervised fine-tuning on step-by-step solutions, in the same token layout the RL agents train on.

Data, in order of preference: explicit examples passed to ``learn(examples=...)`` (recorded trajectories), the
env's worked solutions (``env.unwrapped.problem.solution``, e.g. ``openr/Arithmetic-v0`` writes them), or, with
``rejection_sampling=True``, the policy's own correct episodes (rejection-sampling fine-tuning, the baseline OREO
and OREAL compare against). The loss is the mean negative log-likelihood of the solution tokens (prompt masked),
with an EOS after the last step so the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.rl.forward import policy_forward
from agents.rl.rollout import episode_to_tokens, make_token_batch
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


@dataclass
class SFTExample:
    """One training example: a problem and its solution steps."""

    question: str
    steps: list[str]
    instruction: str = ""


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

    def loss_on(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        """One optimizer step of next-token cross-entropy on the solution tokens."""
        items = [
            episode_to_tokens(
                self.tokenizer,
                self.engine,
                ex.question,
                ex.instruction,
                ex.steps,
                "eos",
                delimiter=getattr(self.engine, "step_delimiter", "\n\n"),
                max_response_tokens=self.config.max_response_tokens,
            )
            for ex in examples
        ]
        batch = make_token_batch(items, self.pad_token_id)
        total_tokens = float(batch.response_mask.sum().clamp(min=1.0))
        nll_sum = 0.0
        for rows in self.micro_batches(len(batch)):
            sub = batch.select(rows)
            with self.autocast():
                out = policy_forward(self.model, sub, chunk_size=self.config.chunk_size)
            nll = -(out.logprobs * sub.response_mask).sum()
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
