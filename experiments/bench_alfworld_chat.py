"""Benchmark KV reuse across the turns of ALFWorld chats: the same games, played greedily, at prefix-cache budgets.

Why: a game's prompt at turn t+1 is its prompt at turn t plus the command and the game's reply, so an engine that
keeps each chat's KV states (``agents.engines.prefix_cache``) prefills only the reply. A wave of games is played in
lock step (one engine call per turn), so the cache must hold every chat of the wave: below that, LRU evicts each
chat before its next turn and the reuse is lost. ``eval_alfworld`` sizes the budget to the wave by default
(``--prefix-cache-tokens``); this script measures what that buys against no cache and the engine's default budget.

Each budget runs ``eval_alfworld.evaluate`` on the same games with the same policy (one model load each) and the
table compares play time, engine time, prompt tokens the engine processed, and whether the commands played are the
same (greedy: a cached prefill differs from a full one only by rounding, which can flip a near-tie). Example::

    python -m experiments.bench_alfworld_chat --play.policy runs/alfworld_sft/agent \\
        --play.show-admissible-commands --play.heldout runs/alfworld_experts/heldout.json --play.max-steps 15 \\
        --budgets 16384 None --out runs/bench_alfworld_chat

Writes ``results.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tyro

from experiments.eval_alfworld import EvalALFWorldConfig, evaluate
from wrappers.recorder import read_trajectories

__all__ = ["BenchChatConfig", "main"]


@dataclass
class BenchChatConfig:
    """The evaluation to repeat and the budgets to compare."""

    play: EvalALFWorldConfig = field(default_factory=lambda: EvalALFWorldConfig(modes=("greedy",)))
    """Policy, games and play settings (``--play.*``; its ``prefix_cache_tokens`` and ``record`` are set here)."""
    budgets: tuple[int | None, ...] = (0, 16384, None)
    """Prefix-cache budgets in tokens: 0 (no reuse), the engine's default 16,384, None (``eval_alfworld``'s
    default: the wave's chats)."""
    out: str = "runs/bench_alfworld_chat"


def _commands(path: Path) -> dict[str, list[str]]:
    return {str(r["problem_id"]): list(r["actions"]) for r in read_trajectories(path)}


def run(config: BenchChatConfig) -> dict[str, Any]:
    out = Path(config.out)
    rows = []
    for budget in config.budgets:
        name = "wave" if budget is None else str(budget)
        record = out / name / "games.jsonl"
        record.unlink(missing_ok=True)
        results = evaluate(
            replace(config.play, prefix_cache_tokens=budget, out=str(out / name), record=str(record))
        )
        mode = next(iter(results["modes"].values()))
        rows.append(
            {
                "budget": name,
                "prefix_cache_tokens": mode["prefix_cache_tokens"],
                "wall_seconds": mode["wall_seconds"],
                "engine_seconds": mode["seconds"]["engine"],
                "engine_prompt_tokens": mode["engine_prompt_tokens"],
                "env_steps": mode["env_steps"],
                "env_steps_per_second": mode["env_steps_per_second"],
                "success": mode["per_task"]["all"]["success"],
                "commands": _commands(record),
            }
        )
    base = rows[0]
    for row in rows:
        row["speedup_vs_first"] = base["wall_seconds"] / row["wall_seconds"] if row["wall_seconds"] else None
        row["prompt_tokens_vs_first"] = row["engine_prompt_tokens"] / max(base["engine_prompt_tokens"], 1)
        row["same_commands_as_first"] = sum(row["commands"].get(g) == c for g, c in base["commands"].items())
    summary = {"config": {"budgets": list(config.budgets), "play": vars(config.play)}, "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| prefix cache (tokens) | play s | engine s | prompt tokens processed | env steps/s | speed-up | "
        "prompt tokens vs first | games with the same commands | success |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['budget']} ({row['prefix_cache_tokens']}) | {row['wall_seconds']:.0f} | "
            f"{row['engine_seconds']:.0f} | {row['engine_prompt_tokens']:,} | {row['env_steps_per_second']:.2f} | "
            f"{row['speedup_vs_first']:.2f}x | {row['prompt_tokens_vs_first']:.2f} | "
            f"{row['same_commands_as_first']} of {len(row['commands'])} | {100 * row['success']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    summary = run(tyro.cli(BenchChatConfig, args=argv))
    print(table(summary))
    return summary


if __name__ == "__main__":
    main()
