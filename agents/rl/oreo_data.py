"""OREO's training data: trajectories with an outcome reward, tokenised with the state and action masks that the
OREO losses (``agents.rl.losses``, OREO section) read.

Sources, all turned into ``OREOTrajectory`` (text) and then into ``TokenTrajectory`` (ids and masks):

- ``wrappers.TrajectoryRecorder`` files (schema v1): the steps (actions) and the outcome of each episode; text-game
  records also need the observation before each action (``extras["observations"]``, which ``OREO.collect``
  writes), since that is what the policy read;
- OREO's own JSONL rows ``{"prompt", "response", "reward"}`` (the prompt used verbatim) and its multi-turn rows
  ``{"conversations": [{"role", "content"}, ...], "reward"}`` (ALFWorld: the user turns are the game's
  observations and are never actions);
- ``Episode`` objects from the agent's own rollouts.

Layouts. A trajectory is one or more rows of (context ids, response ids) with, over the response,
``action`` (1 on tokens the policy wrote) and ``state`` (1 on the first token of each action: the value is read
at the state just before it). Math solutions and conversations are one row: the step prompt is followed by the
steps (``episode_to_tokens``, the exact text the policy conditioned on), the conversation by its turns. A text
game (ALFWorld) whose policy reads the whole observation as one user turn gives one row per turn: that turn's
prompt and the command the policy wrote. Step-level OREO marks the first token of every step / command / assistant
turn as a state; token-level OREO marks every action token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.engines.prompting import encode_prompt, render_prompt
from agents.rl.rollout import Episode, episode_to_tokens

__all__ = [
    "OREOTrajectory",
    "TokenRow",
    "conversation_row",
    "TokenTrajectory",
    "load_trajectories",
    "replay_observations",
    "trajectory_from_episode",
    "trajectory_from_record",
    "write_records",
]

GRANULARITIES = ("step", "token")


@dataclass
class OREOTrajectory:
    """One trajectory in text form and its outcome reward R (OREO's rewards are 0 / 1 by default)."""

    reward: float
    question: str = ""
    instruction: str = ""
    steps: list[str] = field(default_factory=list)
    """The policy's actions (reasoning steps, game commands)."""
    last_finish: str = "eos"
    """How the last step ended (``"eos"``, ``"stop"`` or ``"length"``): decides whether EOS is an action token."""
    observations: list[str] | None = None
    """Text games: the observation the policy read before each action (one row per turn)."""
    prompt: str | None = None
    """OREO JSONL rows: the prompt text used verbatim (then ``response`` holds the solution)."""
    response: str | None = None
    conversation: list[dict[str, str]] | None = None
    """OREO multi-turn rows: chat messages; the assistant turns are the actions."""
    problem_id: str | None = None
    """The env's problem id (lets a text-game trajectory be replayed for its observations)."""


@dataclass
class TokenRow:
    """One model input: ``context`` ids, then ``response`` ids with per-response-token ``action`` / ``state`` 0/1."""

    context: list[int]
    response: list[int]
    action: list[int]
    state: list[int]


@dataclass
class TokenTrajectory:
    """The rows of one trajectory (their responses, concatenated in order, are its token axis) and R."""

    rows: list[TokenRow]
    reward: float

    @property
    def num_tokens(self) -> int:
        return sum(len(row.response) for row in self.rows)


# --- reading -------------------------------------------------------------------------------------------------------


def trajectory_from_record(record: Mapping[str, Any], reward_key: str = "correct") -> OREOTrajectory:
    """A recorder record (schema v1), an OREO ``{"prompt", "response", "reward"}`` row or an OREO
    ``{"conversations", "reward"}`` row. ``reward_key`` picks R for recorder records: ``"correct"`` (1 / 0,
    the paper's setting) or ``"return"`` (the sum of the env's rewards)."""
    if "conversations" in record:
        return OREOTrajectory(reward=float(record["reward"]), conversation=list(record["conversations"]))
    if "response" in record and "prompt" in record and "steps" not in record:
        return OREOTrajectory(
            reward=float(record["reward"]), prompt=str(record["prompt"]), response=str(record["response"])
        )
    if "steps" not in record:
        raise ValueError(
            f"not a trajectory record: keys {sorted(record)} (need recorder 'steps', OREO 'prompt'/'response' "
            "or 'conversations')"
        )
    if reward_key == "correct":
        reward = 1.0 if record.get("correct") else 0.0
    elif reward_key == "return":
        reward = float(record.get("return") or 0.0)
    else:
        raise ValueError(f"reward_key must be 'correct' or 'return', got {reward_key!r}")
    extras = record.get("extras") or {}
    if extras.get("conversations"):  # a recorded chat (agents.game_chat): the chat is what the policy read
        return OREOTrajectory(
            reward=reward,
            question=str(record.get("question") or ""),
            steps=[str(s) for s in record.get("steps") or []],
            conversation=list(extras["conversations"]),
            problem_id=record.get("problem_id"),
        )
    last_finish = str(extras.get("last_finish") or ("eos" if record.get("terminated") else "length"))
    return OREOTrajectory(
        reward=reward,
        question=str(record.get("question") or ""),
        instruction=str(record.get("instruction") or ""),
        steps=[str(s) for s in record.get("steps") or []],
        last_finish=last_finish,
        observations=list(extras["observations"]) if "observations" in extras else None,
        problem_id=record.get("problem_id"),
    )


def load_trajectories(
    paths: str | Path | Iterable[str | Path], reward_key: str = "correct"
) -> list[OREOTrajectory]:
    """Every trajectory in one or more JSONL files (recorder files or OREO rows, mixed freely)."""
    from wrappers.recorder import read_trajectories

    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [
        trajectory_from_record(record, reward_key) for path in paths for record in read_trajectories(path)
    ]


def trajectory_from_episode(episode: Episode, observations: Sequence[str] | None = None) -> OREOTrajectory:
    """A rollout ``Episode`` (R = 1 if correct else 0)."""
    return OREOTrajectory(
        reward=1.0 if episode.correct else 0.0,
        question=episode.question,
        instruction=episode.instruction,
        steps=list(episode.steps),
        last_finish=episode.last_finish,
        observations=list(observations) if observations is not None else None,
        problem_id=episode.problem_id,
    )


def replay_observations(env: Any, trajectory: OREOTrajectory) -> list[str]:
    """The observation before each action of a text-game trajectory, by replaying its actions from a reset to
    its problem (games are deterministic given the problem and the actions)."""
    if not trajectory.problem_id:
        raise ValueError("replaying a trajectory needs its problem_id")
    observation, _ = env.reset(options={"problem_id": trajectory.problem_id})
    observations = [observation]
    for action in trajectory.steps[:-1]:
        observation, _, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        if terminated or truncated:
            break
    return observations


def write_records(path: str | Path, episodes: Sequence[Episode], env_id: str | None, **extras: Any) -> None:
    """Append episodes to ``path`` in the recorder's schema v1 (fields a rollout does not know are null)."""
    from wrappers.recorder import SCHEMA, append_jsonl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for episode in episodes:
        append_jsonl(
            path,
            {
                "schema": SCHEMA,
                "env_id": env_id,
                "problem_id": episode.problem_id,
                "question": episode.question,
                "instruction": episode.instruction,
                "prompt": None,
                "steps": episode.steps,
                "actions": episode.steps,
                "rewards": episode.rewards_per_step(),
                "logprobs": [None] * len(episode.steps),
                "token_ids": [None] * len(episode.steps),
                "step_infos": [{} for _ in episode.steps],
                "return": episode.reward,
                "length": len(episode.steps),
                "terminated": episode.terminated,
                "truncated": not episode.terminated,
                "correct": episode.correct,
                "answer": None,
                "seed": None,
                "extras": {"last_finish": episode.last_finish, **extras},
                "time": None,
            },
        )


# --- tokenising ----------------------------------------------------------------------------------------------------


def state_mask_for(action: Sequence[int], step_starts: Sequence[int], granularity: str) -> list[int]:
    """Step level: 1 at each step's first token; token level: 1 on every action token."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "token":
        return [int(bool(a)) for a in action]
    state = [0] * len(action)
    for start in step_starts:
        if 0 <= start < len(action):
            state[start] = 1
    return state


def tokenize_trajectory(
    trajectory: OREOTrajectory,
    tokenizer: Any,
    engine: Any,
    *,
    granularity: str = "step",
    delimiter: str = "\n\n",
    max_response_tokens: int = 384,
    adapter: Any = None,
) -> TokenTrajectory:
    """The rows and masks of ``trajectory`` (see the module docstring for the layouts)."""
    if trajectory.conversation is not None:
        rows = [conversation_row(tokenizer, trajectory.conversation, granularity, max_response_tokens)]
    elif trajectory.prompt is not None:
        rows = [_text_row(tokenizer, trajectory, granularity, delimiter, max_response_tokens)]
    elif trajectory.observations is not None:
        rows = _turn_rows(tokenizer, engine, adapter, trajectory, granularity, max_response_tokens)
    else:
        item = episode_to_tokens(
            tokenizer,
            engine,
            trajectory.question,
            trajectory.instruction,
            trajectory.steps,
            trajectory.last_finish,
            delimiter=delimiter,
            max_response_tokens=max_response_tokens,
        )
        action = [1] * len(item.response_ids)
        starts = [0] + [end + 1 for end in item.step_ends[:-1]]
        rows = [
            TokenRow(item.prompt_ids, item.response_ids, action, state_mask_for(action, starts, granularity))
        ]
    return TokenTrajectory(rows=rows, reward=float(trajectory.reward))


def _text_row(
    tokenizer: Any, trajectory: OREOTrajectory, granularity: str, delimiter: str, limit: int
) -> TokenRow:
    """An OREO ``prompt`` / ``response`` row: the response's steps are its ``delimiter``-separated pieces."""
    response = str(trajectory.response)
    context = encode_prompt(tokenizer, str(trajectory.prompt))
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    starts, char = [], 0
    for piece in response.split(delimiter):
        token = next((k for k, (start, end) in enumerate(offsets) if end > char), None)
        if token is not None and token not in starts:
            starts.append(token)
        char += len(piece) + len(delimiter)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    ids = ids[:limit] or [int(tokenizer.eos_token_id or 0)]
    action = [1] * len(ids)
    return TokenRow(context, ids, action, state_mask_for(action, starts, granularity))


def conversation_row(
    tokenizer: Any, conversation: Sequence[Mapping[str, str]], granularity: str, limit: int
) -> TokenRow:
    """One sequence over the whole chat; the assistant turns (with their end-of-turn token) are the actions, every
    other turn (the env's observations) is context inside the response with ``action`` 0."""
    messages = [dict(m) for m in conversation]
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise ValueError("a conversation needs at least one assistant turn")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False).rstrip())
        spans.append((start, end))
    context_text = full[: spans[0][0]]
    context = encode_prompt(tokenizer, context_text)
    encoded = tokenizer(full[len(context_text) :], add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"])[:limit], list(encoded["offset_mapping"])[:limit]
    shift = len(context_text)
    action = [int(any(s <= a + shift < e for s, e in spans)) for a, _ in offsets]
    starts = [next((k for k, (a, _) in enumerate(offsets) if a + shift >= s), len(ids)) for s, _ in spans]
    return TokenRow(context, ids, action, state_mask_for(action, starts, granularity))


def _turn_rows(
    tokenizer: Any, engine: Any, adapter: Any, trajectory: OREOTrajectory, granularity: str, limit: int
) -> list[TokenRow]:
    """Text games: one row per turn, the prompt the policy read at that turn and the command it wrote."""
    from agents.adapters import TextGameAdapter

    adapter = adapter if adapter is not None else TextGameAdapter(trajectory.instruction)
    observations = list(trajectory.observations or [])
    if len(observations) < len(trajectory.steps):
        raise ValueError(
            f"{len(trajectory.steps)} actions but {len(observations)} observations: text-game trajectories "
            "need the observation before every action"
        )
    rows, budget = [], limit
    for observation, command in zip(observations, trajectory.steps):
        info = {"problem": trajectory.question, "steps": []}
        context = encode_prompt(
            tokenizer, render_prompt(tokenizer, adapter.prompt(engine, info, observation))
        )
        ids = list(tokenizer(command + adapter.step_delimiter, add_special_tokens=False)["input_ids"])
        ids = ids[: max(budget, 1)] or [int(tokenizer.eos_token_id or 0)]
        budget -= len(ids)
        action = [1] * len(ids)
        rows.append(TokenRow(context, ids, action, state_mask_for(action, [0], granularity)))
        if budget <= 0:
            break
    return rows
