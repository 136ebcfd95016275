"""Batched episodes through a Gymnasium vector env and the engine interface, and their conversion to token tensors.

Why a vector env: every sub-env advances in lock-step, so each reasoning step of all episodes is one batched
``engine.generate`` call. GRPO groups are sub-envs reset with the same seed (same problem). Two modes:

- ``"step"``: one engine call per reasoning step, stopping at the env's step delimiter (the step-level protocol;
  PRM wrappers score each step as it is taken);
- ``"episode"``: one engine call writes the whole solution, which is then cut at the delimiter and fed to the env
  step by step (same rewards, far fewer prompt re-reads on an engine without prefix caching).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.adapters import StepAdapter
from agents.engines.prompting import encode_prompt, render_prompt

__all__ = [
    "Episode",
    "TokenBatch",
    "collect_episodes",
    "episode_to_tokens",
    "make_token_batch",
    "rollout_stats",
]


@dataclass
class Episode:
    """One finished (or cut off) episode as the trainer needs it."""

    question: str
    instruction: str
    problem_id: str
    steps: list[str] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    last_finish: str = "length"
    """How the model's last generated text ended: ``"stop"`` (delimiter), ``"eos"`` or ``"length"``."""
    correct: bool = False
    terminated: bool = False
    generated_tokens: int = 0

    @property
    def reward(self) -> float:
        return float(sum(self.step_rewards))

    def rewards_per_step(self) -> list[float]:
        """One reward per recorded step (an empty action is not recorded as a step: its reward goes to the last)."""
        count = max(len(self.steps), 1)
        rewards = list(self.step_rewards) or [0.0]
        if len(rewards) <= count:
            return rewards + [0.0] * (count - len(rewards))
        return rewards[: count - 1] + [float(sum(rewards[count - 1 :]))]


def _info_at(infos: Mapping[str, Any], index: int) -> dict[str, Any]:
    """One sub-env's info from a vector env's dict-of-arrays info."""
    out = {}
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        present = infos.get(f"_{key}")
        if present is None or bool(present[index]):
            out[key] = values[index]
    return out


def _split_steps(text: str, delimiter: str) -> list[str]:
    return [piece for piece in text.split(delimiter)]


def collect_episodes(
    engine: Any,
    vec_env: Any,
    adapter: StepAdapter,
    reset_seeds: Sequence[int],
    *,
    max_steps: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
    mode: str = "step",
) -> list[Episode]:
    """Run one episode in each sub-env of ``vec_env`` (reset with ``reset_seeds``) and return them in order.

    ``max_new_tokens`` is per step in ``"step"`` mode and for the whole solution in ``"episode"`` mode.
    Sub-envs that finish early are stepped with empty actions (ignored) until all are done, so any Gymnasium
    vector env with the default next-step autoreset works.
    """
    if mode not in ("step", "episode"):
        raise ValueError(f"mode must be 'step' or 'episode', got {mode!r}")
    num_envs = vec_env.num_envs
    if len(reset_seeds) != num_envs:
        raise ValueError(f"need one reset seed per sub-env ({num_envs}), got {len(reset_seeds)}")
    _, infos = vec_env.reset(seed=[int(s) for s in reset_seeds])
    first = [_info_at(infos, i) for i in range(num_envs)]
    episodes = [
        Episode(
            question=adapter.question(info),
            instruction=str(info.get("instruction", adapter.instruction)),
            problem_id=str(info.get("problem_id", "")),
        )
        for info in first
    ]
    current = list(first)
    active = [True] * num_envs
    planned: list[list[str]] = []
    finishes: list[str] = []
    if mode == "episode":
        prompts = [adapter.prompt(engine, info) for info in current]
        completions = engine.generate(
            prompts, n=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        planned = [_split_steps(group[0].text, adapter.step_delimiter) for group in completions]
        finishes = [group[0].finish_reason for group in completions]
        for episode, group in zip(episodes, completions):
            episode.generated_tokens += len(group[0].token_ids)
    for step_index in range(max_steps):
        indices = [i for i in range(num_envs) if active[i]]
        if not indices:
            break
        actions = [""] * num_envs
        if mode == "step":
            prompts = [adapter.prompt(engine, current[i]) for i in indices]
            completions = engine.generate(
                prompts,
                n=1,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=adapter.stop,
                seed=None if seed is None else seed + 1000 * step_index,
            )
            for i, group in zip(indices, completions):
                actions[i] = adapter.to_action(group[0])
                episodes[i].last_finish = group[0].finish_reason
                episodes[i].generated_tokens += len(group[0].token_ids)
        else:
            for i in indices:
                pieces = planned[i]
                actions[i] = pieces[step_index].strip() if step_index < len(pieces) else ""
                is_last_piece = step_index >= len(pieces) - 1
                episodes[i].last_finish = finishes[i] if is_last_piece else "stop"
        _, rewards, terminated, truncated, infos = vec_env.step(tuple(actions))
        for i in indices:
            info = _info_at(infos, i)
            episode = episodes[i]
            episode.steps = [str(s) for s in info.get("steps", episode.steps)]
            episode.step_rewards.append(float(rewards[i]))
            current[i] = info
            done = bool(terminated[i] or truncated[i])
            ran_out = mode == "episode" and step_index >= len(planned[i]) - 1
            if done or ran_out or step_index == max_steps - 1:
                active[i] = False
                episode.terminated = bool(terminated[i])
                episode.correct = bool(info.get("is_success", False))
    return episodes


def rollout_stats(episodes: Sequence[Episode]) -> dict[str, float]:
    """The ``rollout/`` metrics of a batch of episodes."""
    if not episodes:
        return {}
    return {
        "rollout/ep_rew_mean": float(np.mean([e.reward for e in episodes])),
        "rollout/accuracy": float(np.mean([e.correct for e in episodes])),
        "rollout/ep_len_mean": float(np.mean([len(e.steps) for e in episodes])),
        "rollout/tokens": float(np.mean([e.generated_tokens for e in episodes])),
        "rollout/answered": float(np.mean([e.terminated for e in episodes])),
    }


@dataclass
class TokenizedEpisode:
    """Prompt and response token ids of one episode; ``step_ends[j]`` indexes the last response token of step j."""

    prompt_ids: list[int]
    response_ids: list[int]
    step_ends: list[int]


def episode_to_tokens(
    tokenizer: Any,
    engine: Any,
    question: str,
    instruction: str,
    steps: Sequence[str],
    last_finish: str,
    *,
    delimiter: str = "\n\n",
    max_response_tokens: int = 512,
) -> TokenizedEpisode:
    """Token ids the policy is trained on: the step-0 prompt, then the steps joined by the delimiter.

    This is exactly the text the model conditioned on at each step (``step_prompt`` renders earlier steps joined by
    the delimiter). The last step keeps its delimiter if generation stopped there, and gets the EOS token if the
    model ended with EOS, so stopping is learned too.
    """
    prompt_text = render_prompt(tokenizer, engine.step_prompt(question, [], instruction))
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    pieces = [step + delimiter for step in steps[:-1]]
    if steps:
        pieces.append(steps[-1] + (delimiter if last_finish == "stop" else ""))
    text = "".join(pieces)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else None
    response_ids = list(encoded["input_ids"]) if encoded else []
    offsets = list(encoded["offset_mapping"]) if encoded else []
    step_ends: list[int] = []
    char_end = 0
    for piece in pieces:
        char_end += len(piece)
        last = max((k for k, (start, _) in enumerate(offsets) if start < char_end), default=0)
        step_ends.append(last)
    eos = tokenizer.eos_token_id
    if last_finish == "eos" and eos is not None:
        response_ids.append(int(eos))
        if step_ends:
            step_ends[-1] = len(response_ids) - 1
    if not response_ids:  # an empty episode still needs one target token to carry its reward
        response_ids = [int(eos if eos is not None else 0)]
        step_ends = [0] * max(len(steps), 1)
    response_ids = response_ids[:max_response_tokens]
    step_ends = [min(end, len(response_ids) - 1) for end in step_ends]
    return TokenizedEpisode(prompt_ids, response_ids, step_ends)


@dataclass
class TokenBatch:
    """Right-padded model inputs plus where each response token sits.

    ``input_ids`` / ``attention_mask``: ``(B, L)``. ``response_positions``: ``(B, R)`` column in the model's
    shifted log-prob output (``token_logprobs`` index ``t`` predicts token ``t + 1``) of each response token;
    ``response_mask``: ``(B, R)`` 1 on real response tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_positions: torch.Tensor
    response_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """``(B,)`` prompt + response tokens of each row."""
        return self.attention_mask.sum(1)

    def select(self, rows: Sequence[int] | slice) -> TokenBatch:
        """These rows, with the input columns that are padding in all of them cut off (the right padding of a
        long row elsewhere in the batch is not computed again; the response columns keep the batch's width)."""
        index = rows if isinstance(rows, slice) else torch.as_tensor(list(rows), dtype=torch.long)
        attention_mask = self.attention_mask[index]
        width = (
            max(int(attention_mask.sum(1).max()), 1) if attention_mask.numel() else attention_mask.shape[1]
        )
        return TokenBatch(
            self.input_ids[index][:, :width],
            attention_mask[:, :width],
            self.response_positions[index],
            self.response_mask[index],
        )


def make_token_batch(items: Sequence[TokenizedEpisode], pad_token_id: int) -> TokenBatch:
    width = max(len(it.prompt_ids) + len(it.response_ids) for it in items)
    response_width = max(len(it.response_ids) for it in items)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    positions = torch.zeros((len(items), response_width), dtype=torch.long)
    mask = torch.zeros((len(items), response_width), dtype=torch.float32)
    for row, item in enumerate(items):
        sequence = item.prompt_ids + item.response_ids
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
        count = len(item.response_ids)
        positions[row, :count] = torch.arange(len(item.prompt_ids) - 1, len(item.prompt_ids) - 1 + count)
        mask[row, :count] = 1.0
    return TokenBatch(input_ids, attention_mask, positions, mask)
