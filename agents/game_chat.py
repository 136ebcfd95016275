"""Text games (ALFWorld) as a multi-turn chat, and batched play of many games with one engine call per turn.

Why a chat: the single-turn view (``TextGameAdapter``: the whole transcript as one user turn) re-renders the game
history inside every prompt, so a recorded game cannot be trained as one sequence. Here the first user turn holds
the instruction, the room and the task, each command the policy wrote is an assistant turn and each answer of the
game a user turn. The prompt at turn t+1 extends the prompt at turn t, so one game is one training sequence
(OREO's multi-turn ``{"conversations", "reward"}`` rows, ``agents.rl.oreo_data``) whose assistant turns are the
only action tokens: the game's text is context, never a target.

With the env's ``show_admissible_commands=True`` every user turn ends with the commands possible at that point
(longer prompts; the policy then chooses rather than composes); with ``show_status=True`` a status line (task, what
is held, receptacles not visited yet; ``reasoning_gym.alfworld.status``) comes before them, rebuilt from the chat's
own text, so recorded chats and lookahead copies get the same line the env showed.

``play_games`` runs a wave of games in lock-step: one ``engine.generate`` call per turn for all unfinished games
(``n=K`` samples each when a chooser picks among K commands, e.g. OREO's value, :class:`ValueChooser`). Each game
comes back as a :class:`GameChat` and, with :func:`chat_record`, as a recorder record (schema v1, the chat in
``extras["conversations"]``), which ``agents.rl.oreo_data.load_trajectories`` and ``SFT`` read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.adapters import TextGameAdapter
from agents.engines.prompting import encode_prompt, render_prompt
from reasoning_gym.alfworld.status import ADMISSIBLE_MARK, STATUS_MARK, game_status, task_text

__all__ = ["ChatGameAdapter", "GameChat", "ValueChooser", "chat_record", "play_games"]


@dataclass
class GameChat:
    """One game as chat turns: the opening user turn, then (command, the game's reply, admissible after it)."""

    opening: str
    """First user turn: the instruction, the room and the task."""
    opening_admissible: list[str] = field(default_factory=list)
    show_admissible: bool = False
    commands: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    admissible: list[list[str]] = field(default_factory=list)
    problem_id: str = ""
    task_type: str = ""
    won: bool = False
    done: bool = False
    token_ids: list[list[int] | None] = field(default_factory=list)
    """Per command, the ids the policy generated (or the tokenizer's ids for expert commands)."""
    invalid: int = 0
    """Commands the game did not accept."""

    show_status: bool = False
    """End every user turn with the env's status line (before the admissible commands)."""

    def _user(self, text: str, admissible: Sequence[str], turn: int) -> dict[str, str]:
        if self.show_status:
            text += STATUS_MARK + game_status(self.opening, zip(self.commands[:turn], self.replies[:turn]))
        if self.show_admissible and admissible:
            text += ADMISSIBLE_MARK + ", ".join(admissible)
        return {"role": "user", "content": text}

    def prompt(self) -> list[dict[str, str]]:
        """The chat the policy reads before its next command (ends with a user turn)."""
        messages = [self._user(self.opening, self.opening_admissible, 0)]
        for turn, (command, reply, admissible) in enumerate(
            zip(self.commands, self.replies, self.admissible), 1
        ):
            messages.append({"role": "assistant", "content": command})
            messages.append(self._user(reply, admissible, turn))
        return messages

    def prefix(self, turns: int) -> GameChat:
        """A copy holding the first ``turns`` commands (the game as it stood then; lists are copied)."""
        return dataclasses.replace(
            self,
            commands=self.commands[:turns],
            replies=self.replies[:turns],
            admissible=[list(a) for a in self.admissible[:turns]],
            token_ids=list(self.token_ids[:turns]),
        )

    def conversation(self) -> list[dict[str, str]]:
        """The chat up to the last command (the training row: every assistant turn is an action)."""
        return self.prompt()[:-1] if self.commands else self.prompt()

    def add(self, command: str, reply: str, admissible: Sequence[str], token_ids: list[int] | None) -> None:
        self.commands.append(command)
        self.replies.append(reply)
        self.admissible.append(list(admissible))
        self.token_ids.append(token_ids)


class ChatGameAdapter(TextGameAdapter):
    """The chat view of a text game: builds :class:`GameChat` from the env's first observation and cuts a
    completion into one command (its first line, like ``TextGameAdapter``)."""

    def __init__(
        self,
        instruction: str = "",
        show_admissible: bool = False,
        max_action_chars: int = 1000,
        show_status: bool = False,
    ):
        super().__init__(instruction, "\n", max_action_chars)
        self.show_admissible = show_admissible
        self.show_status = show_status

    @classmethod
    def from_env(cls, env: Any) -> ChatGameAdapter:
        base = getattr(env, "unwrapped", env)
        return cls(
            instruction=str(getattr(base, "instruction", "") or ""),
            show_admissible=bool(getattr(base, "show_admissible_commands", False)),
            show_status=bool(getattr(base, "show_status", False)),
        )

    def start(self, observation: str, info: dict[str, Any]) -> GameChat:
        """The chat of a freshly reset game (the observation without its status and admissible-commands tail)."""
        opening = observation.split(ADMISSIBLE_MARK, 1)[0].split(STATUS_MARK, 1)[0].strip()
        return GameChat(
            opening=opening,
            opening_admissible=list(info.get("admissible_commands", [])),
            show_admissible=self.show_admissible,
            show_status=self.show_status,
            problem_id=str(info.get("problem_id", "")),
            task_type=str(info.get("task_type", "")),
        )

    def prompt(self, engine: Any, info: dict[str, Any], observation: str | None = None) -> Any:
        """``info["chat"]`` (a :class:`GameChat`) as chat messages; without it, the single-turn view."""
        chat = info.get("chat")
        if isinstance(chat, GameChat):
            return chat.prompt()
        return super().prompt(engine, info, observation)


def chat_record(chat: GameChat, env_id: str | None = "openr/ALFWorld-v0", **extras: Any) -> dict[str, Any]:
    """One played game in the recorder's schema v1 (``wrappers.recorder``): the opening as ``prompt``, the commands
    as ``steps`` with their ``token_ids``, the outcome as ``correct``; the game's replies and the chat (the
    multi-turn training row) in ``extras``."""
    from wrappers.recorder import SCHEMA

    count = len(chat.commands)
    return {
        "schema": SCHEMA,
        "env_id": env_id,
        "problem_id": chat.problem_id,
        "question": task_text(chat.opening) or chat.opening.strip(),
        "instruction": None,
        "prompt": chat.opening,
        "steps": list(chat.commands),
        "actions": list(chat.commands),
        "rewards": [0.0] * (count - 1) + [1.0 if chat.won else 0.0] if count else [],
        "logprobs": [None] * count,
        "token_ids": list(chat.token_ids),
        "step_infos": [{} for _ in range(count)],
        "return": 1.0 if chat.won else 0.0,
        "length": count,
        "terminated": chat.won,
        "truncated": not chat.won,
        "correct": chat.won,
        "answer": None,
        "seed": None,
        "extras": {
            "task_type": chat.task_type,
            "replies": list(chat.replies),
            "invalid_steps": chat.invalid,
            "conversations": chat.conversation(),
            **extras,
        },
        "time": time.time(),
    }


Chooser = Callable[[list[GameChat], list[Any], list[list[str]]], list[int]]
"""``(chats, envs, candidate commands per game) -> index of the command to play per game``."""


def play_games(
    engine: Any,
    envs: Sequence[Any],
    problem_ids: Sequence[str],
    adapter: ChatGameAdapter,
    *,
    max_steps: int = 30,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    num_candidates: int = 1,
    chooser: Chooser | None = None,
    seed: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[GameChat]:
    """Play ``problem_ids[i]`` in ``envs[i]`` (all at once, one engine call per turn) and return the chats.

    ``num_candidates`` > 1 samples K commands per game and turn; ``chooser`` picks one (default: the first).
    ``timings`` (if given) accumulates seconds in ``engine`` / ``game`` / ``chooser`` and ``env_steps``."""
    if len(envs) != len(problem_ids):
        raise ValueError(f"{len(envs)} envs for {len(problem_ids)} games")
    timings = timings if timings is not None else {}
    for key in ("engine", "game", "chooser", "env_steps"):
        timings.setdefault(key, 0.0)
    chats = []
    started = time.perf_counter()
    for env, problem_id in zip(envs, problem_ids):
        observation, info = env.reset(options={"problem_id": problem_id})
        chats.append(adapter.start(observation, info))
    timings["game"] += time.perf_counter() - started
    for turn in range(max_steps):
        active = [i for i, chat in enumerate(chats) if not chat.done]
        if not active:
            break
        started = time.perf_counter()
        groups = engine.generate(
            [chats[i].prompt() for i in active],
            n=num_candidates,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop=["\n"],
            seed=None if seed is None else seed * 1000 + turn,
        )
        timings["engine"] += time.perf_counter() - started
        candidates = [[adapter.to_action(c) for c in group] for group in groups]
        picks = [0] * len(active)
        if chooser is not None and num_candidates > 1:
            started = time.perf_counter()
            picks = chooser([chats[i] for i in active], [envs[i] for i in active], candidates)
            timings["chooser"] += time.perf_counter() - started
        started = time.perf_counter()
        for slot, i in enumerate(active):
            completion = groups[slot][picks[slot]]
            command = candidates[slot][picks[slot]]
            _, _, terminated, truncated, info = envs[i].step(command)
            timings["env_steps"] += 1
            chats[i].add(
                command, str(info["feedback"]), info["admissible_commands"], list(completion.token_ids)
            )
            chats[i].invalid += int(bool(info.get("invalid")))
            chats[i].won = bool(info.get("is_success"))
            chats[i].done = terminated or truncated or len(chats[i].commands) >= max_steps
        timings["game"] += time.perf_counter() - started
    return chats


class ValueChooser:
    """OREO's test-time choice among K sampled commands: play each distinct candidate on a scratch copy of the game
    (``get_state`` / ``set_state``), read V at the end of the chat the policy would read next, play the best.

    A candidate that wins the game gets value 1.0 (the outcome reward R it observes); ties keep the sampling order.
    ``backbone`` / ``head``: the value model (``OREO.value_backbone()`` / ``OREO.value_head``)."""

    def __init__(self, backbone: Any, head: torch.nn.Module, tokenizer: Any, scratch_env: Any) -> None:
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.scratch = scratch_env
        self.values_read = 0

    @torch.no_grad()
    def values(self, prompts: Sequence[list[dict[str, str]]]) -> list[float]:
        """V read at the last token of each rendered prompt (right-padded batch, one pass)."""
        from agents.engines.logprobs import hidden_states

        encoded = [encode_prompt(self.tokenizer, render_prompt(self.tokenizer, p)) for p in prompts]
        if not encoded:
            return []
        width = max(len(ids) for ids in encoded)
        pad = int(self.tokenizer.pad_token_id or 0)
        device = next(self.backbone.parameters()).device
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, device=device)
            mask[row, : len(ids)] = 1
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            hidden = hidden_states(self.backbone, input_ids, mask)
        finally:
            self.backbone.train(was_training)
        last = hidden[torch.arange(len(encoded), device=device), mask.sum(1) - 1]
        self.values_read += len(encoded)
        return [float(v) for v in self.head(last.float()).squeeze(-1)]

    @torch.no_grad()
    def values_after(
        self, prompt: list[dict[str, str]], nexts: Sequence[list[dict[str, str]]]
    ) -> list[float]:
        """V of each chat in ``nexts`` (``prompt`` continued by one command and the game's reply): the shared
        ``prompt`` runs once and its key/value cache serves every continuation, so a candidate costs its own
        ~30 tokens instead of the whole chat (as ``values`` when a continuation is not a token extension)."""
        from transformers import DynamicCache

        head_ids = encode_prompt(self.tokenizer, render_prompt(self.tokenizer, prompt))
        tails = [encode_prompt(self.tokenizer, render_prompt(self.tokenizer, p)) for p in nexts]
        if not tails or any(ids[: len(head_ids)] != head_ids or len(ids) == len(head_ids) for ids in tails):
            return self.values(nexts)
        tails = [ids[len(head_ids) :] for ids in tails]
        device = next(self.backbone.parameters()).device
        decoder = self.backbone.get_decoder()
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            cache = DynamicCache(config=self.backbone.config)
            decoder(input_ids=torch.tensor([head_ids], device=device), past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(len(tails))
            width = max(len(ids) for ids in tails)
            pad = int(self.tokenizer.pad_token_id or 0)
            input_ids = torch.full((len(tails), width), pad, dtype=torch.long, device=device)
            for row, ids in enumerate(
                tails
            ):  # right padding: causal attention keeps it out of every real token
                input_ids[row, : len(ids)] = torch.tensor(ids, device=device)
            positions = len(head_ids) + torch.arange(width, device=device).expand(len(tails), -1)
            hidden = decoder(
                input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
        finally:
            self.backbone.train(was_training)
        last = hidden[torch.arange(len(tails), device=device), torch.tensor([len(t) - 1 for t in tails])]
        self.values_read += len(tails)
        return [float(v) for v in self.head(last.float()).squeeze(-1)]

    @torch.no_grad()
    def state_values(self, chat: GameChat) -> list[float]:
        """V at every state of a played game (before each of its commands): one pass over the game's last prompt,
        read at the last token of each earlier prompt (those are its prefixes); separate passes if one is not."""
        from agents.engines.logprobs import hidden_states

        prompts = [chat.prefix(t).prompt() for t in range(len(chat.commands))]
        if not prompts:
            return []
        encoded = [encode_prompt(self.tokenizer, render_prompt(self.tokenizer, p)) for p in prompts]
        full = encoded[-1]
        if any(full[: len(ids)] != ids for ids in encoded):
            return self.values(prompts)
        device = next(self.backbone.parameters()).device
        input_ids = torch.tensor([full], dtype=torch.long, device=device)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            hidden = hidden_states(self.backbone, input_ids, torch.ones_like(input_ids))[0]
        finally:
            self.backbone.train(was_training)
        positions = torch.tensor([len(ids) - 1 for ids in encoded], device=device)
        self.values_read += len(prompts)
        return [float(v) for v in self.head(hidden[positions].float()).squeeze(-1)]

    def __call__(self, chats: list[GameChat], envs: list[Any], candidates: list[list[str]]) -> list[int]:
        picks = []
        for chat, env, commands in zip(chats, envs, candidates):
            state = env.unwrapped.get_state()
            distinct = list(dict.fromkeys(commands))
            if len(distinct) == 1:  # nothing to choose: no lookahead, no value read
                picks.append(0)
                continue
            prompts, fixed = [], {}
            for command in distinct:
                self.scratch.unwrapped.set_state(state)
                _, _, terminated, _, info = self.scratch.unwrapped.step(command)
                if terminated and info.get("is_success"):
                    fixed[command] = 1.0
                    continue
                after = chat.prefix(len(chat.commands))
                after.add(command, str(info["feedback"]), info["admissible_commands"], None)
                prompts.append((command, after.prompt()))
            scores = dict(fixed)
            if prompts:
                read = self.values_after(chat.prompt(), [p for _, p in prompts])
                scores.update(zip([c for c, _ in prompts], read))
            best = max(distinct, key=lambda c: scores[c])
            picks.append(commands.index(best))
        return picks
