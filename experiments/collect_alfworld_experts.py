"""Expert play on generated ALFWorld games, recorded for behaviour cloning (SFT), plus the held-out game list.

The fast-downward planner (``env.unwrapped.expert_plan()``, optimal and always winning on generated games) plays
``train_games`` training games; each game is written as one recorder record (schema v1, ``wrappers.recorder``):
the opening observation as ``prompt``, each command with its token ids (the policy's tokenizer), the game's
replies and the outcome, and the multi-turn chat the policy reads (``agents.game_chat``) in
``extras["conversations"]``, which ``experiments/train.py sft|oreo --data-files`` read directly.

Games are chosen by ``--seed``: training games are distinct generator seeds of the ``train`` split drawn by it;
held-out games are ``heldout_games`` consecutive seeds of ``heldout_split`` (default ``valid_unseen``: ALFRED's
held-out rooms, which training games never use) from a start drawn by it, so they mix all six task types (seed
``s`` makes task type ``s % 6``). With ``heldout_split=train`` the training seeds skip the held-out ones.
The script also measures the longest expert chat in tokens against the model's context.

Example::

    python -m experiments.collect_alfworld_experts --train-games 120 --heldout-games 12 --out runs/alfworld_experts
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

__all__ = ["parse_args", "CollectExpertsConfig", "collect", "game_split", "main"]

SEED_RANGE = 100_000
"""Generator seeds are drawn from ``[0, SEED_RANGE)``."""


@dataclass
class CollectExpertsConfig:
    """Which games, which expert, where the records go."""

    out: str = "runs/alfworld_experts"
    """Output folder: ``train.jsonl`` (expert records), ``heldout.json`` (held-out problem ids), ``summary.json``."""
    train_games: int = 120
    """Training games played by the expert."""
    heldout_games: int = 12
    """Held-out games (a multiple of 6 gives every task type the same count)."""
    seed: int = 0
    """Chooses the training and held-out games."""
    heldout_split: str = "valid_unseen"
    """Split of the held-out games: ``valid_unseen`` (unseen rooms) or ``train`` (seen rooms, disjoint seeds)."""
    show_admissible_commands: bool = False
    """Write the admissible commands at the end of every user turn of the chat (the env option of that name)."""
    show_status: bool = False
    """Write the env's status line (task, held object, receptacles not visited yet) in every user turn (the env
    option ``show_status``)."""
    model: str = "smollm2-135m-instruct"
    """Tokenizer for the commands' token ids and the context measurement (name, HF id or folder)."""
    expert: Literal["planner", "handcoded"] = "planner"
    """``planner``: fast-downward, optimal but omniscient (it walks straight to objects the text has not shown);
    ``handcoded``: ALFWorld's own expert, which explores like a person (longer games; fails pick_two games)."""
    keep_lost: bool = False
    """Also write games the expert did not win (never the case for the planner)."""
    max_steps: int = 50
    """Step limit per game (the planner needs ~6)."""
    cache_dir: str | None = None
    """Generated-game cache (default ``~/.cache/openr-gym/alfworld``)."""
    progress: bool = True
    """Show a progress bar."""


def game_split(seed: int, train_games: int, heldout_games: int, heldout_split: str) -> dict[str, list[str]]:
    """Disjoint training and held-out problem ids chosen by ``seed`` (see the module docstring)."""
    if heldout_split not in ("valid_unseen", "train"):
        raise ValueError(f"heldout_split must be 'valid_unseen' or 'train', got {heldout_split!r}")
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, SEED_RANGE // 6 - heldout_games)) * 6
    heldout = list(range(start, start + heldout_games))
    excluded = set(heldout) if heldout_split == "train" else set()
    pool = rng.permutation(SEED_RANGE)
    train = [int(s) for s in pool if int(s) not in excluded][:train_games]
    return {
        "train": [f"gen-train-{s:06d}" for s in sorted(train)],
        "heldout": [f"gen-{heldout_split}-{s:06d}" for s in heldout],
    }


def make_env(show_admissible: bool, max_steps: int, cache_dir: str | None = None, **kwargs: Any) -> Any:
    """``openr/ALFWorld-v0`` on generated games (whatever ``$ALFWORLD_DATA`` says) unless ``kwargs`` choose."""
    import gymnasium as gym

    import reasoning_gym  # noqa: F401

    settings = {"source": "generated", "num_games": 6, "cache_dir": cache_dir, **kwargs}
    return gym.make(
        "openr/ALFWorld-v0",
        max_episode_steps=max_steps,
        show_admissible_commands=show_admissible,
        **settings,
    )


def play_expert(
    env: Any, problem_id: str, adapter: Any, tokenizer: Any, max_steps: int, expert: str = "planner"
) -> Any:
    """One expert game as a ``GameChat`` (commands with their token ids, replies, outcome)."""
    observation, info = env.reset(options={"problem_id": problem_id})
    chat = adapter.start(observation, info)
    if expert == "handcoded":
        from reasoning_gym.alfworld.expert import HandcodedExpert

        follower = HandcodedExpert(seed=0)
        command = follower.reset(env)
        while not chat.done:
            _, _, terminated, truncated, info = env.step(command)
            ids = list(tokenizer(command, add_special_tokens=False)["input_ids"])
            chat.add(command, str(info["feedback"]), info["admissible_commands"], ids)
            chat.won = bool(info["is_success"])
            chat.done = terminated or truncated or len(chat.commands) >= max_steps
            command = follower.step(env, command)
        return chat
    while not chat.done:
        plan = env.unwrapped.expert_plan()
        if not plan:
            break
        for command in plan:
            _, _, terminated, truncated, info = env.step(command)
            ids = list(tokenizer(command, add_special_tokens=False)["input_ids"])
            chat.add(command, str(info["feedback"]), info["admissible_commands"], ids)
            chat.won = bool(info["is_success"])
            chat.done = terminated or truncated or len(chat.commands) >= max_steps
            if chat.done:
                break
    return chat


def chat_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of the rendered chat (what the model reads at the game's last turn)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def model_context(model: str) -> int:
    """The model's context length (``max_position_embeddings``; 0 when unknown)."""
    from transformers import AutoConfig

    from agents.engines.models import resolve_model_path

    try:
        return int(
            getattr(AutoConfig.from_pretrained(resolve_model_path(model)), "max_position_embeddings", 0)
        )
    except (OSError, ValueError):
        return 0


def collect(config: CollectExpertsConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from agents.engines.models import load_tokenizer
    from agents.game_chat import ChatGameAdapter, chat_record
    from wrappers.recorder import append_jsonl

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "train.jsonl"
    records_path.unlink(missing_ok=True)
    split = game_split(config.seed, config.train_games, config.heldout_games, config.heldout_split)
    tokenizer = load_tokenizer(config.model)
    env = make_env(
        config.show_admissible_commands, config.max_steps, config.cache_dir, show_status=config.show_status
    )
    adapter = ChatGameAdapter.from_env(env)
    lengths, won, per_type = [], 0, Counter()
    try:
        for problem_id in tqdm(split["train"], desc="expert games", disable=not config.progress):
            chat = play_expert(env, problem_id, adapter, tokenizer, config.max_steps, config.expert)
            if chat.won or config.keep_lost:
                append_jsonl(records_path, chat_record(chat, expert=config.expert, tokenizer=config.model))
            lengths.append(chat_tokens(tokenizer, chat.prompt()))
            won += chat.won
            per_type[chat.task_type] += 1
        heldout_types = {}
        heldout_env = make_env(config.show_admissible_commands, config.max_steps, config.cache_dir)
        for problem_id in tqdm(split["heldout"], desc="held-out games", disable=not config.progress):
            _, info = heldout_env.reset(options={"problem_id": problem_id})
            heldout_types[problem_id] = info["task_type"]
        heldout_env.close()
    finally:
        env.close()
    context = model_context(config.model)
    summary = {
        "config": asdict(config),
        "train_games": len(split["train"]),
        "expert_success": won / max(len(split["train"]), 1),
        "train_task_types": dict(per_type),
        "heldout": heldout_types,
        "heldout_task_types": dict(Counter(heldout_types.values())),
        "chat_tokens_max": max(lengths, default=0),
        "chat_tokens_mean": float(np.mean(lengths)) if lengths else 0.0,
        "expert_steps_mean": None,
        "model_context": context,
        "fits_context": max(lengths, default=0) <= context if context else None,
    }
    steps = [len(r["steps"]) for r in _read(records_path)]
    summary["expert_steps_mean"] = float(np.mean(steps)) if steps else 0.0
    summary["expert_steps_max"] = max(steps, default=0)
    (out / "heldout.json").write_text(
        json.dumps({"problem_ids": split["heldout"], "task_types": heldout_types})
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "heldout")}, indent=2))
    return summary


def _read(path: Path) -> list[dict[str, Any]]:
    from wrappers.recorder import read_trajectories

    return list(read_trajectories(path)) if path.exists() else []


def parse_args(argv: list[str] | None = None) -> CollectExpertsConfig:
    """The script's config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(CollectExpertsConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return collect(parse_args(argv))


if __name__ == "__main__":
    main()
