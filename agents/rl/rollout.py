"""Batched episodes through a Gymnasium vector env and the engine interface, and their conversion to token tensors.

Why a vector env: every sub-env advances in lock-step, so each reasoning step of all episodes is one batched
``engine.generate`` call. GRPO groups are sub-envs reset with the same seed (same problem). Two modes:

- ``"step"``: one engine call per reasoning step, stopping at the env's step delimiter (the step-level protocol;
  PRM wrappers score each step as it is taken);
- ``"episode"``: one engine call writes the whole solution, which is then cut at the delimiter and fed to the env
  step by step (same rewards, far fewer prompt re-reads on an engine without prefix caching).

Token in, token out: every engine call is recorded as a ``Segment`` (the prompt ids the model was conditioned on,
the ids it sampled, stop-string tokens included, and their log-probs), and the trainer trains on exactly those
(``episode_rows``). Re-tokenising the episode's text instead would train on a sequence the model never produced
wherever byte-level BPE merges differently across a step boundary (the bug class of TRL #5224, rLLM #272,
SkyRL #123, veRL #6719). Text is tokenised only for text data (``episode_to_tokens``: SFT on worked solutions).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.adapters import StepAdapter
from agents.engines.prompting import encode_prompt, render_prompt

__all__ = [
    "Episode",
    "RolloutBatch",
    "Segment",
    "TokenBatch",
    "TokenizedEpisode",
    "collect_episodes",
    "episode_rows",
    "episode_to_tokens",
    "make_rollout_batch",
    "make_token_batch",
    "rollout_stats",
]


@dataclass
class Segment:
    """One engine call of an episode exactly as sampled.

    ``prompt_ids``: what the model was conditioned on; ``response_ids`` / ``logprobs``: what it sampled (the stop
    string's tokens included) and the engine's log-prob of each; ``step_ends[j]``: index in ``response_ids`` of
    the last token of the j-th env step this call wrote (one in step mode, one per piece in episode mode).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    step_ends: list[int] = field(default_factory=list)


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
    segments: list[Segment] = field(default_factory=list)
    """The engine calls that wrote this episode (what the trainer trains on); ``step_rewards[j]`` belongs to the
    j-th step end over all segments."""

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


def _prompt_ids(engine: Any, prompt: Any) -> list[int]:
    """The ids the engine feeds the model for ``prompt`` (its own ``encode`` where it has one)."""
    encode = getattr(engine, "encode", None)
    if callable(encode):
        return list(encode(prompt))
    return encode_prompt(engine.tokenizer, render_prompt(engine.tokenizer, prompt))


def _sampled(completion: Any) -> tuple[list[int], list[float]]:
    """Every token the engine sampled for ``completion`` (stop-string tokens included) and its log-prob."""
    ids = list(completion.token_ids) + list(getattr(completion, "stop_token_ids", []) or [])
    logprobs = list(completion.logprobs) + list(getattr(completion, "stop_logprobs", []) or [])
    return ids, logprobs + [0.0] * (len(ids) - len(logprobs))


def _piece_ends(tokenizer: Any, ids: list[int], pieces: list[str], delimiter: str, count: int) -> list[int]:
    """Token index ending each of the first ``count`` pieces (with its delimiter) of the text ``ids`` decode to;
    the last one is the last token (what was sampled after the last stepped piece belongs to that step)."""
    from agents.engines.stopping import tokens_covering

    ends, chars = [], 0
    for piece in pieces[:count]:
        chars += len(piece) + len(delimiter)
        ends.append(max(tokens_covering(tokenizer, ids, chars) - 1, 0))
    if ends:
        ends[-1] = max(len(ids) - 1, 0)
    return [min(end, max(len(ids) - 1, 0)) for end in ends]


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
    timings: dict[str, float] | None = None,
) -> list[Episode]:
    """Run one episode in each sub-env of ``vec_env`` (reset with ``reset_seeds``) and return them in order.

    ``max_new_tokens`` is per step in ``"step"`` mode and for the whole solution in ``"episode"`` mode.
    ``timings`` (if given) accumulates seconds in the ``engine`` (generation) and the ``env`` (reset and step).
    Sub-envs that finish early are stepped with empty actions (ignored) until all are done, so any Gymnasium
    vector env with the default next-step autoreset works.

    A chat adapter (one with ``start``, e.g. ``agents.game_chat.ChatGameAdapter``) plays a text game as a
    multi-turn chat: the first observation is the opening user turn, each command an assistant turn, each of the
    game's replies the next user turn (``info["chat"]`` carries it to ``adapter.prompt``). A turn's prompt then
    extends the last one, so ``episode_rows`` makes the whole game one row whose replies are context, not targets.
    """
    if mode not in ("step", "episode"):
        raise ValueError(f"mode must be 'step' or 'episode', got {mode!r}")
    chat_view = callable(getattr(adapter, "start", None))
    if chat_view and mode != "step":
        raise ValueError("a multi-turn chat is played one engine call per turn: use mode='step'")
    num_envs = vec_env.num_envs
    if len(reset_seeds) != num_envs:
        raise ValueError(f"need one reset seed per sub-env ({num_envs}), got {len(reset_seeds)}")
    timings = timings if timings is not None else {}
    for key in ("engine", "env"):
        timings.setdefault(key, 0.0)
    started = time.perf_counter()
    observations, infos = vec_env.reset(seed=[int(s) for s in reset_seeds])
    timings["env"] += time.perf_counter() - started
    first = [_info_at(infos, i) for i in range(num_envs)]
    chats = [adapter.start(str(observations[i]), first[i]) for i in range(num_envs)] if chat_view else []
    for info, chat in zip(first, chats):
        info["chat"] = chat
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
        started = time.perf_counter()
        completions = engine.generate(
            prompts, n=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        timings["engine"] += time.perf_counter() - started
        planned = [_split_steps(group[0].text, adapter.step_delimiter) for group in completions]
        finishes = [group[0].finish_reason for group in completions]
        for episode, prompt, group in zip(episodes, prompts, completions):
            episode.generated_tokens += len(group[0].token_ids)
            ids, logprobs = _sampled(group[0])
            episode.segments.append(Segment(_prompt_ids(engine, prompt), ids, logprobs))
    for step_index in range(max_steps):
        indices = [i for i in range(num_envs) if active[i]]
        if not indices:
            break
        actions = [""] * num_envs
        if mode == "step":
            prompts = [adapter.prompt(engine, current[i]) for i in indices]
            started = time.perf_counter()
            completions = engine.generate(
                prompts,
                n=1,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=adapter.stop,
                seed=None if seed is None else seed + 1000 * step_index,
            )
            timings["engine"] += time.perf_counter() - started
            for i, prompt, group in zip(indices, prompts, completions):
                actions[i] = adapter.to_action(group[0])
                episodes[i].last_finish = group[0].finish_reason
                episodes[i].generated_tokens += len(group[0].token_ids)
                ids, logprobs = _sampled(group[0])
                episodes[i].segments.append(
                    Segment(_prompt_ids(engine, prompt), ids, logprobs, [max(len(ids) - 1, 0)])
                )
        else:
            for i in indices:
                pieces = planned[i]
                actions[i] = pieces[step_index].strip() if step_index < len(pieces) else ""
                is_last_piece = step_index >= len(pieces) - 1
                episodes[i].last_finish = finishes[i] if is_last_piece else "stop"
        started = time.perf_counter()
        _, rewards, terminated, truncated, infos = vec_env.step(tuple(actions))
        timings["env"] += time.perf_counter() - started
        for i in indices:
            info = _info_at(infos, i)
            if chat_view:
                sampled = episodes[i].segments[-1].response_ids
                chats[i].add(
                    actions[i], str(info.get("feedback", "")), info.get("admissible_commands", []), sampled
                )
                chats[i].invalid += int(bool(info.get("invalid")))
                info["chat"] = chats[i]
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
                if mode == "episode":
                    segment = episode.segments[0]
                    segment.step_ends = _piece_ends(
                        engine.tokenizer,
                        segment.response_ids,
                        planned[i],
                        adapter.step_delimiter,
                        len(episode.step_rewards),
                    )
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
    """One training row (a whole episode, or the part of one that shares a prompt, see ``episode_rows``): prompt ids, response ids (what the policy is trained to produce) and
    ``step_ends[j]``, the response index of the last token of the j-th step the row holds. ``logprobs`` are the
    engine's sampling log-probs of the response (empty for text data)."""

    prompt_ids: list[int]
    response_ids: list[int]
    step_ends: list[int]
    logprobs: list[float] = field(default_factory=list)
    episode: int = 0
    """Index of the episode the row belongs to (an episode may need several rows, see ``episode_rows``)."""
    targets: list[int] | None = None
    """Per response token, 1 if the policy wrote it (a training target), 0 for context inside the response (a
    text game's reply between two of the policy's turns); None: every token is a target."""

    def target_mask(self) -> list[int]:
        return list(self.targets) if self.targets is not None else [1] * len(self.response_ids)


def episode_rows(episode: Episode, index: int = 0, max_response_tokens: int = 512) -> list[TokenizedEpisode]:
    """The training rows of an episode, built from the ids the engine sampled (token in, token out).

    Consecutive engine calls share a row when the next call's prompt is this row's prompt + response (the usual
    case: the next step's prompt re-encodes to the ids just sampled), possibly followed by more context: in a
    multi-turn chat (``agents.game_chat``) the game's reply and the turn markers come between two commands; they
    join the row's response as non-target tokens (``targets`` 0: context, never trained on), so a whole game is
    one sequence. Otherwise the next call starts a new row with its own prompt, so every response token is
    conditioned on the ids the engine conditioned it on. Each row's response is cut to ``max_response_tokens``.
    """
    rows: list[TokenizedEpisode] = []
    for segment in episode.segments:
        if not segment.response_ids:
            continue
        last = rows[-1] if rows else None
        joined = last.prompt_ids + last.response_ids if last is not None else []
        if last is not None and segment.prompt_ids[: len(joined)] == joined:
            gap = list(segment.prompt_ids[len(joined) :])
            targets = last.target_mask() + [0] * len(gap) + [1] * len(segment.response_ids)
            offset = len(last.response_ids) + len(gap)
            last.response_ids += gap + segment.response_ids
            last.logprobs += [0.0] * len(gap) + segment.logprobs
            last.step_ends += [offset + end for end in segment.step_ends]
            last.targets = None if all(targets) else targets
        else:
            rows.append(
                TokenizedEpisode(
                    list(segment.prompt_ids),
                    list(segment.response_ids),
                    list(segment.step_ends),
                    list(segment.logprobs),
                    index,
                )
            )
    for row in rows:
        row.response_ids = row.response_ids[:max_response_tokens]
        row.logprobs = row.logprobs[:max_response_tokens]
        if row.targets is not None:
            row.targets = row.targets[:max_response_tokens]
        row.step_ends = [min(end, len(row.response_ids) - 1) for end in row.step_ends]
    return rows


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
    """Token ids of a written solution, for text data only (SFT's worked solutions, recorded text): the step-0
    prompt, then the steps joined by the delimiter. Sampled episodes are never re-tokenised: the RL trainers
    use ``episode_rows`` (the ids the engine sampled).

    The last step keeps its delimiter if it ended there, and gets the EOS token if ``last_finish`` is ``"eos"``,
    so stopping is learned too.
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
    if not response_ids:  # an empty solution still needs one target token
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
    ``response_mask``: ``(B, R)`` 1 on the response tokens that are targets (0 on padding and on context inside
    a multi-turn response, see ``TokenizedEpisode.targets``).
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
        mask[row, :count] = torch.tensor(item.target_mask(), dtype=torch.float32)
    return TokenBatch(input_ids, attention_mask, positions, mask)


@dataclass
class RolloutBatch:
    """Episodes as the optimise stage reads them: the token rows, and the map between rows and episodes.

    ``prepare`` stages compute per-token quantities in the episode layout ``(E, T)`` (all of an episode's response
    tokens in order, ``episode_mask``; step ``j`` of episode ``e`` ends at ``step_ends[e][j]``), where GAE and
    sequence means are natural, and move them to the rows with ``to_rows``.
    """

    episodes: list[Episode]
    tokens: TokenBatch
    row_episode: list[int]
    row_offset: list[int]
    """Where each row's response starts in its episode's token sequence."""
    step_ends: list[list[int]]
    episode_mask: torch.Tensor
    sampled_logprobs: torch.Tensor
    """``(B, R)`` the engine's sampling log-probs of the response tokens (0 on padding)."""
    row_lengths: list[int] = field(default_factory=list)
    """Response tokens of each row, targets or not (``response_mask`` has holes in a multi-turn chat)."""

    def __len__(self) -> int:
        return len(self.tokens)

    def _row_length(self, row: int) -> int:
        if self.row_lengths:
            return self.row_lengths[row]
        return int(self.tokens.response_mask[row].sum())

    def to_rows(self, values: torch.Tensor) -> torch.Tensor:
        """``(E, T)`` episode-layout values -> ``(B, R)`` row layout (0 on padding)."""
        mask = self.tokens.response_mask
        out = torch.zeros(mask.shape, dtype=values.dtype)
        for row, (episode, offset) in enumerate(zip(self.row_episode, self.row_offset)):
            count = self._row_length(row)
            out[row, :count] = values[episode, offset : offset + count]
        return out * mask

    def to_episodes(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` row-layout values -> ``(E, T)`` episode layout."""
        out = torch.zeros(self.episode_mask.shape, dtype=values.dtype)
        for row, (episode, offset) in enumerate(zip(self.row_episode, self.row_offset)):
            count = self._row_length(row)
            out[episode, offset : offset + count] = values[row, :count]
        return out * self.episode_mask

    def per_episode(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """``(B, R)``: every response token gets its episode's value."""
        column = torch.as_tensor(values, dtype=torch.float32)[:, None]
        return self.to_rows(column * self.episode_mask)

    def per_step(self, values: Sequence[Sequence[float]]) -> torch.Tensor:
        """``(B, R)``: every token of step ``j`` of episode ``e`` gets ``values[e][j]`` (tokens after the last
        step end, if any, get the last step's value)."""
        out = torch.zeros(self.episode_mask.shape)
        for episode, (ends, row_values) in enumerate(zip(self.step_ends, values)):
            start = 0
            for end, value in zip(ends, row_values):
                out[episode, start : end + 1] = float(value)
                start = end + 1
            if row_values and ends:
                out[episode, start:] = float(row_values[min(len(ends), len(row_values)) - 1])
        return self.to_rows(out * self.episode_mask)


def make_rollout_batch(
    episodes: Sequence[Episode], pad_token_id: int, max_response_tokens: int = 512
) -> RolloutBatch:
    """Rows of every episode (``episode_rows``) as one ``TokenBatch`` plus the row <-> episode map."""
    rows: list[TokenizedEpisode] = []
    for index, episode in enumerate(episodes):
        built = episode_rows(episode, index, max_response_tokens)
        if not built:  # nothing sampled (e.g. max_new_tokens 0): one EOS-free empty target keeps the shapes
            built = [
                TokenizedEpisode(
                    episode.segments[0].prompt_ids if episode.segments else [pad_token_id],
                    [pad_token_id],
                    [0],
                    [0.0],
                    index,
                )
            ]
        rows.extend(built)
    tokens = make_token_batch(rows, pad_token_id)
    offsets, step_ends, lengths = [], [[] for _ in episodes], [0] * len(episodes)
    for row in rows:
        offsets.append(lengths[row.episode])
        step_ends[row.episode] += [lengths[row.episode] + end for end in row.step_ends]
        lengths[row.episode] += len(row.response_ids)
    episode_mask = torch.zeros((len(episodes), max(lengths, default=1)))
    for row, offset in zip(rows, offsets):
        episode_mask[row.episode, offset : offset + len(row.response_ids)] = torch.tensor(
            row.target_mask(), dtype=torch.float32
        )
    sampled = torch.zeros(tokens.response_mask.shape)
    for index, row in enumerate(rows):
        sampled[index, : len(row.logprobs)] = torch.tensor(row.logprobs, dtype=torch.float32)
    return RolloutBatch(
        list(episodes),
        tokens,
        [row.episode for row in rows],
        offsets,
        step_ends,
        episode_mask,
        sampled,
        [len(row.response_ids) for row in rows],
    )
