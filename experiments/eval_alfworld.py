"""Play a policy on ALFWorld games in the chat view (``agents.game_chat``): success rate and mean steps per task type.

Modes: ``greedy`` (temperature 0), ``value`` (OREO's value picks among ``num_candidates`` sampled commands per turn,
``agents.game_chat.ValueChooser``; needs ``--value``, a saved OREO agent folder) and ``sampled`` (temperature
``temperature``, ``samples`` rollouts per game). Games: the held-out list written by
``experiments/collect_alfworld_experts.py`` (``--heldout``), or ``--games`` ones chosen by ``--seed`` the same way,
or the games of a recorded file (``--games-from train.jsonl``: the policy's own rollouts on training games, for
rejection-sampling fine-tuning and OREO), or real ALFWorld games (``--source alfworld``: the first ``--games`` of
``$ALFWORLD_DATA/json_2.1.1/<split>``). ``--record`` writes every game played as a recorder record (schema v1, with
the chat in ``extras["conversations"]``) that ``experiments/train.py sft|oreo --data-files`` read.

Writes ``results.json``, ``results.md`` (table) and ``results.png`` to ``--out``. Examples::

    python -m experiments.eval_alfworld --heldout runs/alfworld_experts/heldout.json --out runs/alfworld_eval/base
    python -m experiments.eval_alfworld --policy runs/alfworld_oreo/agent --value runs/alfworld_oreo/agent \\
        --modes greedy value --heldout runs/alfworld_experts/heldout.json --out runs/alfworld_eval/oreo
    ALFWORLD_DATA=~/alfworld python -m experiments.eval_alfworld --source alfworld --split valid_unseen --games 134
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

__all__ = ["parse_args", "EvalALFWorldConfig", "evaluate", "main", "summarize"]

Mode = Literal["greedy", "value", "sampled"]

CHAT_TOKENS = 8192
"""Prefix-cache tokens per game of a wave by default: SmolLM2's context, the longest chat a game can have."""


@dataclass
class EvalALFWorldConfig:
    """Policy, value model, games and play settings."""

    policy: str = "smollm2-135m-instruct"
    """Model name, HF id, HF folder or a saved agent folder (its ``policy/``)."""
    label: str | None = None
    """Name of the policy in the table (default: the folder name)."""
    value: str | None = None
    """Saved OREO agent folder for the ``value`` mode (``value/``, or ``value_head.pt`` on the policy)."""
    modes: tuple[Mode, ...] = ("greedy",)
    """Ways to choose commands (see the module docstring)."""
    heldout: str | None = None
    """``heldout.json`` from ``collect_alfworld_experts`` (its problem ids are played)."""
    games_from: str | None = None
    """A JSONL of records whose problem ids are played (e.g. the expert ``train.jsonl``)."""
    games: int = 12
    """Games when neither ``heldout`` nor ``games_from`` is given (chosen by ``seed``) or with ``source=alfworld``."""
    seed: int = 0
    """Chooses the games (as ``collect_alfworld_experts`` does) and seeds sampling."""
    source: Literal["generated", "alfworld"] = "generated"
    """Generated games, or real ALFWorld games from ``$ALFWORLD_DATA`` (or ``data_dir``)."""
    split: str = "valid_unseen"
    """Split of real games (``source=alfworld``) or of chosen generated held-out games."""
    data_dir: str | None = None
    """Real ALFWorld data folder instead of ``$ALFWORLD_DATA``."""
    show_admissible_commands: bool = False
    """Show the admissible commands at the end of every user turn (the env option)."""
    show_status: bool = False
    """Show the env's status line (task, held object, receptacles not visited yet) in every user turn (the env
    option); a policy trained with it must be played with it."""
    max_steps: int = 30
    """Step limit per game."""
    max_new_tokens: int = 24
    """Token limit per command."""
    num_candidates: int = 4
    """K, commands sampled per turn in the ``value`` mode."""
    temperature: float = 1.0
    """Sampling temperature of the ``value`` and ``sampled`` modes."""
    samples: int = 1
    """Rollouts per game in the ``sampled`` mode."""
    wave: int = 12
    """Games played together (one engine call per turn for the wave)."""
    prefix_cache_tokens: int | None = None
    """KV states the engine keeps across turns, in tokens (``agents.engines.prefix_cache``): each turn's prompt
    extends the last, so a game whose chat stays cached prefills only the game's new reply. Default
    ``wave x CHAT_TOKENS``: every game of a wave keeps a whole chat (SmolLM2-135M in bf16: 23,040 bytes a token, so
    <= 2.3 GB for 12 games). A budget that holds fewer games than a wave loses the reuse: lock-step turns visit the
    games in a cycle, and LRU evicts each chat before its next turn (``bench_alfworld_chat`` measures it). 0: none."""
    record: str | None = None
    """Append every game played to this JSONL (recorder schema v1 with the chat)."""
    calibrate_records: str | None = None
    """With ``--value``: also the value's calibration on the games of this JSONL of records (e.g. the rollouts OREO
    trained on, which hold won games when the held-out games have none)."""
    out: str = "runs/alfworld_eval"
    """Output folder."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 only where the CPU runs it fast), float32 or bfloat16."""
    threads: int | None = None
    """Torch CPU threads."""
    cache_dir: str | None = None
    """Generated-game cache."""


def problem_ids(config: EvalALFWorldConfig) -> list[str]:
    """The games to play (see ``EvalALFWorldConfig``)."""
    if config.heldout:
        return list(json.loads(Path(config.heldout).read_text())["problem_ids"])
    if config.games_from:
        from wrappers.recorder import read_trajectories

        return list(dict.fromkeys(str(r["problem_id"]) for r in read_trajectories(config.games_from)))
    if config.source == "alfworld":
        from reasoning_gym.alfworld.games import GamePool

        pool = GamePool(split=config.split, source="alfworld", data_dir=config.data_dir)
        return pool.problem_ids[: config.games]
    from experiments.collect_alfworld_experts import game_split

    return game_split(config.seed, 0, config.games, config.split)["heldout"]


def policy_label(policy: str) -> str:
    """The folder name (its parent's for a saved agent's ``.../<run>/agent``)."""
    path = Path(policy)
    return path.parent.name if path.name == "agent" and path.parent.name else path.name


def load_value(folder: str, policy_model: Any) -> tuple[Any, Any]:
    """``(backbone, head)`` of a saved OREO agent: its own value LM, or a head on the policy (``shared``)."""
    import torch

    path = Path(folder)
    if (path / "value").is_dir():
        from rewards.prm.value_head import CausalLMWithValueHead

        dtype = next(policy_model.parameters()).dtype  # the policy's (bf16 where the CPU runs it natively)
        value_lm = CausalLMWithValueHead.from_pretrained(path / "value", dtype=dtype).eval()
        return value_lm.backbone, value_lm.v_head
    head = torch.nn.Linear(policy_model.config.hidden_size, 1)
    head.load_state_dict(torch.load(path / "value_head.pt", weights_only=True))
    return policy_model, head


def summarize(chats: list[Any]) -> dict[str, Any]:
    """Success rate and mean steps (all games; won games) per task type and overall."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for chat in chats:
        groups[chat.task_type or "unknown"].append(chat)
    groups["all"] = list(chats)

    def row(games: list[Any]) -> dict[str, float]:
        won = [g for g in games if g.won]
        return {
            "games": len(games),
            "success": sum(g.won for g in games) / max(len(games), 1),
            "mean_steps": sum(len(g.commands) for g in games) / max(len(games), 1),
            "mean_steps_won": sum(len(g.commands) for g in won) / len(won) if won else None,
            "invalid_rate": sum(g.invalid for g in games) / max(sum(len(g.commands) for g in games), 1),
        }

    return {name: row(games) for name, games in sorted(groups.items())}


MILESTONES = (
    ("placed", ("You move ",)),
    ("heated / cooled / cleaned / lamp on", ("You heat ", "You cool ", "You clean ", "You turn on ")),
    ("picked up", ("You pick up ",)),
    ("moved around", ("You arrive at ", "You open ", "You close ")),
)
"""Progress marks read from the game's replies, furthest first (ALFWorld's own wording)."""


def failure_stage(chat: Any) -> str:
    """How far a game got: the furthest milestone in its replies (``none``: no command did anything)."""
    for name, prefixes in MILESTONES:
        if any(reply.startswith(prefixes) for reply in chat.replies):
            return name
    return "none"


def failures(chats: list[Any]) -> dict[str, Any]:
    """Where lost games stopped (furthest milestone) and how many ended in a loop (<= 2 distinct commands in
    their last 6)."""
    lost = [c for c in chats if not c.won]
    stages = Counter(failure_stage(c) for c in lost)
    looped = sum(len(c.commands) >= 6 and len(set(c.commands[-6:])) <= 2 for c in lost)
    return {"lost": len(lost), "furthest_milestone": dict(stages), "ended_in_loop": looped}


def search(chats: list[Any]) -> dict[str, Any]:
    """Does the policy look, and does it take what the task names? Over all games: distinct receptacles reached
    (accepted ``go to``) per game, games where a reply showed an object of the task's class, and games where the
    policy then picked one up (the step the sixth session's clones missed, docs/alfworld.md)."""
    from reasoning_gym.alfworld.status import accepted, goal_object, task_text

    visited, shown, taken = [], 0, 0
    for chat in chats:
        done = [c for c, r in zip(chat.commands, chat.replies) if accepted(r)]
        visited.append(len({c for c in done if c.startswith("go to ")}))
        goal = goal_object(task_text(chat.opening))
        if goal is None:
            continue
        seen = any(re.search(rf"\b{goal} \d+", reply) for reply in chat.replies)
        shown += seen
        taken += seen and any(re.match(rf"take {goal} \d+ from ", c) for c in done)
    return {
        "games": len(chats),
        "receptacles_per_game": sum(visited) / max(len(visited), 1),
        "goal_object_shown": shown,
        "goal_object_shown_and_taken": taken,
    }


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """P(a positive scores above a negative), ties half (None without both)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def calibration(chooser: Any, chats: list[Any]) -> dict[str, Any]:
    """The value model on played games, won vs lost: mean V over their states, at the first and the last state,
    and the AUC of the per-game mean V for telling won games from lost ones."""
    per_game = [(chat.won, chooser.state_values(chat)) for chat in chats if chat.commands]

    def stats(values: list[list[float]]) -> dict[str, float | None]:
        def mean(xs: list[float]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        return {
            "games": len(values),
            "mean_v": mean([mean(v) for v in values]),
            "first_v": mean([v[0] for v in values]),
            "last_v": mean([v[-1] for v in values]),
        }

    won = [v for w, v in per_game if w]
    lost = [v for w, v in per_game if not w]
    return {
        "won": stats(won),
        "lost": stats(lost),
        "auc_mean_v": auc([sum(v) / len(v) for v in won], [sum(v) / len(v) for v in lost]),
    }


def evaluate(config: EvalALFWorldConfig) -> dict[str, Any]:
    import torch

    from agents.engines import HFEngine
    from agents.engines.hardware import hardware_info
    from agents.game_chat import ChatGameAdapter, ValueChooser, chat_record, play_games
    from experiments.collect_alfworld_experts import make_env
    from experiments.train import load_policy
    from wrappers.recorder import append_jsonl

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    is_agent = (Path(config.policy) / "policy").is_dir()
    model, tokenizer = load_policy(config.policy, config.policy if is_agent else None)
    from agents.engines.models import resolve_dtype

    model = model.to(resolve_dtype(config.dtype))
    games = problem_ids(config)
    wave = max(1, min(config.wave, len(games) * max(1, config.samples)))
    budget = wave * CHAT_TOKENS if config.prefix_cache_tokens is None else config.prefix_cache_tokens
    engine = HFEngine(model, tokenizer, num_threads=config.threads, prefix_cache_tokens=budget)
    env_kwargs: dict[str, Any] = (
        {"source": "alfworld", "split": config.split, "data_dir": config.data_dir}
        if config.source == "alfworld"
        else {}
    )
    env_kwargs["show_status"] = config.show_status
    envs = [
        make_env(config.show_admissible_commands, config.max_steps, config.cache_dir, **env_kwargs)
        for _ in range(wave)
    ]
    adapter = ChatGameAdapter.from_env(envs[0])
    results: dict[str, Any] = {
        "config": asdict(config),
        "label": config.label or policy_label(config.policy),
        "problem_ids": games,
        "hardware": hardware_info(model_dtype=next(model.parameters()).dtype, autocast=None, device="cpu"),
        "modes": {},
    }
    if "value" in config.modes and not config.value:
        raise SystemExit("--modes value needs --value (a saved OREO agent folder)")
    value_chooser = None
    if config.value:
        backbone, head = load_value(config.value, model)
        scratch = make_env(config.show_admissible_commands, config.max_steps, config.cache_dir, **env_kwargs)
        value_chooser = ValueChooser(backbone, head, tokenizer, scratch)
    for mode in config.modes:
        chooser, settings = None, {"temperature": 0.0, "num_candidates": 1}
        if mode == "value":
            chooser = value_chooser
            settings = {"temperature": config.temperature, "num_candidates": config.num_candidates}
        elif mode == "sampled":
            settings = {"temperature": config.temperature, "num_candidates": 1}
        repeats = config.samples if mode == "sampled" else 1
        todo = [g for g in games for _ in range(repeats)]
        chats, timings, started = [], {}, time.perf_counter()
        prompt_tokens_before = engine.stats.prompt_tokens
        for start in range(0, len(todo), wave):
            batch = todo[start : start + wave]
            chats += play_games(
                engine,
                envs[: len(batch)],
                batch,
                adapter,
                max_steps=config.max_steps,
                max_new_tokens=config.max_new_tokens,
                chooser=chooser,
                seed=config.seed + start,
                timings=timings,
                **settings,
            )
            print(f"{mode}: {len(chats)}/{len(todo)} games, {sum(c.won for c in chats)} won", flush=True)
        wall = time.perf_counter() - started
        if config.record:
            Path(config.record).parent.mkdir(parents=True, exist_ok=True)
            for chat in chats:
                append_jsonl(config.record, chat_record(chat, policy=results["label"], mode=mode, **settings))
        results["modes"][mode] = {
            "per_task": summarize(chats),
            "wall_seconds": wall,
            "env_steps_per_second": timings["env_steps"] / wall if wall else 0.0,
            "seconds": {k: v for k, v in timings.items() if k != "env_steps"},
            "env_steps": timings["env_steps"],
            "engine_prompt_tokens": engine.stats.prompt_tokens - prompt_tokens_before,
            "prefix_cache_tokens": budget,
            "settings": settings,
            "failures": failures(chats),
            "search": search(chats),
        }
        if value_chooser is not None:
            results["modes"][mode]["value_calibration"] = calibration(value_chooser, chats)
    if value_chooser is not None and config.calibrate_records:
        chats = recorded_chats(config.calibrate_records)
        results["recorded_calibration"] = {
            "file": config.calibrate_records,
            "games": len(chats),
            "games_won": sum(c.won for c in chats),
            **calibration(value_chooser, chats),
        }
    for env in envs:
        env.close()
    write_outputs(out, results)
    return results


def recorded_chats(path: str) -> list[Any]:
    """The games of a JSONL of chat records as ``GameChat`` objects that render the recorded turns verbatim (the
    user turns keep whatever admissible commands they showed)."""
    from agents.game_chat import GameChat
    from wrappers.recorder import read_trajectories

    chats = []
    for record in read_trajectories(path):
        turns = record.get("extras", {}).get("conversations") or []
        if len(turns) < 2:
            continue
        users = [t["content"] for t in turns if t["role"] == "user"]
        commands = [t["content"] for t in turns if t["role"] == "assistant"]
        replies = users[1:] + [""]  # the reply to the last command is not part of the training row
        chat = GameChat(users[0], problem_id=str(record.get("problem_id", "")))
        for command, reply in zip(commands, replies):
            chat.add(command, reply, [], None)
        chat.won = bool(record.get("correct"))
        chats.append(chat)
    return chats


def table(results: dict[str, Any]) -> str:
    """Markdown: per mode, success and mean steps per task type."""
    lines = [
        "| policy | mode | task type | games | success | mean steps | invalid steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, block in results["modes"].items():
        for task, row in block["per_task"].items():
            lines.append(
                f"| {results['label']} | {mode} | {task} | {row['games']} | {100 * row['success']:.1f}% | "
                f"{row['mean_steps']:.1f} | {100 * row['invalid_rate']:.0f}% |"
            )
    for mode, block in results["modes"].items():
        lost = block.get("failures")
        if lost:
            lines.append(
                f"\n{mode}: lost {lost['lost']}, furthest milestone {lost['furthest_milestone']}, "
                f"ended in a loop {lost['ended_in_loop']}"
            )
        looked = block.get("search")
        if looked:
            lines.append(
                f"{mode}: receptacles reached per game {looked['receptacles_per_game']:.1f}; the task's object shown in "
                f"{looked['goal_object_shown']} of {looked['games']} games, taken in "
                f"{looked['goal_object_shown_and_taken']}"
            )
        values = block.get("value_calibration")
        if values:
            lines.append(
                f"{mode}: value on won games {values['won']}, on lost games {values['lost']}, "
                f"AUC(mean V) {values['auc_mean_v']}"
            )
    values = results.get("recorded_calibration")
    if values:
        lines.append(
            f"recorded games ({values['file']}: {values['games']}, {values['games_won']} won): value on won "
            f"games {values['won']}, on lost games {values['lost']}, AUC(mean V) {values['auc_mean_v']}"
        )
    return "\n".join(lines)


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(table(results) + "\n")
    print(table(results), flush=True)
    modes = list(results["modes"])
    tasks = sorted({t for block in results["modes"].values() for t in block["per_task"]})
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(tasks)), 3.6))
    width = 0.8 / max(len(modes), 1)
    for k, mode in enumerate(modes):
        rows = results["modes"][mode]["per_task"]
        axis.bar(
            [i + k * width for i in range(len(tasks))],
            [100 * rows.get(t, {"success": 0.0})["success"] for t in tasks],
            width,
            label=mode,
        )
    axis.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(tasks))])
    axis.set_xticklabels(
        [t.replace("_then_place_in_recep", "").replace("pick_", "") for t in tasks], rotation=20
    )
    axis.set_ylabel("success (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{results['label']} on {len(results['problem_ids'])} ALFWorld games")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "results.png", dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> EvalALFWorldConfig:
    """The script's config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(EvalALFWorldConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return evaluate(parse_args(argv))


if __name__ == "__main__":
    main()
