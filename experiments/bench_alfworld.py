"""Benchmark openr/ALFWorld-v0: speed against stock TextWorld, scripted experts, and a greedy SmolLM2 baseline.

Usage:
    .venv/bin/python -m experiments.bench_alfworld                       # everything (policy column needs torch)
    .venv/bin/python -m experiments.bench_alfworld --no-policy --expert-games 60
    .venv/bin/python -m experiments.bench_alfworld --out runs/bench_alfworld

1. Speed: on the same games in the same process, stock TextWorld (``PddlEnv`` + ALFWorld's demangler, as ALFWorld
   plays games) and ``ALFWorldEnv`` play the same seeded random walk of admissible commands; steps/s and reset times
   are compared and the game traces (feedback + admissible commands) are checked to be identical.
2. Experts: success of the planner expert (must be 100%) and of ALFWorld's hand-coded expert on generated games.
3. Policy: greedy SmolLM2-135M-Instruct (``agents.engines.HFEngine``) choosing commands, admissible commands shown.

Writes ``results.json`` and prints the tables (markdown).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import tyro

import reasoning_gym  # noqa: F401  (registers openr/*)
from reasoning_gym.alfworld import run_expert
from reasoning_gym.alfworld.engine import make_textworld_env
from reasoning_gym.alfworld.env import ALFWorldEnv
from reasoning_gym.alfworld.speedups import stock_textworld
from reasoning_gym.data import shared_data_dir

REAL_GAME = "alfworld/real_sample_heat_potato_FloorPlan14"
_POLICY_ASK = "\n\nWrite the next command, chosen from the admissible commands."


def _games(num_generated: int, cache_dir: str | None, with_real: bool = True) -> list[tuple[str, dict]]:
    """(label, env kwargs + problem id) for the real sample game (if present) and the first generated games."""
    games: list[tuple[str, dict]] = []
    data = shared_data_dir()
    if with_real and data is not None and (data / REAL_GAME / "game.tw-pddl").is_file():
        games.append(("real:" + REAL_GAME.split("/")[-1], {"game_files": [data / REAL_GAME]}))
    for seed in range(num_generated):
        games.append(
            (
                f"gen-train-{seed:06d}",
                {"num_games": num_generated, "cache_dir": cache_dir, "pid": f"gen-train-{seed:06d}"},
            )
        )
    return games


def _make_env(spec: dict, **extra: Any) -> tuple[ALFWorldEnv, dict]:
    kwargs = {k: v for k, v in spec.items() if k != "pid"}
    env = ALFWorldEnv(**kwargs, **extra)
    options = {"problem_id": spec["pid"]} if "pid" in spec else None
    return env, options or {}


def _strip_banner(trace: list) -> list:
    """The env drops the intro banner; everything else must match stock exactly."""
    return [(fb.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip(), adm) for fb, adm in trace]


def _ours_walk(env: ALFWorldEnv, options: dict, commands: list[str] | None, walk_steps: int, seed: int):
    """Reset, then play ``commands`` (or a seeded random walk); returns (reset s, step s, commands, trace)."""
    t0 = time.perf_counter()
    _, info = env.reset(options=options)
    reset_s = time.perf_counter() - t0
    rng = random.Random(seed)
    played, trace = [], [(info["feedback"], info["admissible_commands"])]
    t0 = time.perf_counter()
    for index in range(len(commands) if commands is not None else walk_steps):
        command = commands[index] if commands is not None else rng.choice(info["admissible_commands"])
        _, _, terminated, _, info = env.step(command)
        played.append(command)
        trace.append((info["feedback"], info["admissible_commands"]))
        if terminated:
            break
    return reset_s, time.perf_counter() - t0, played, trace


def _stock_walk(game_file: str, commands: list[str]):
    """Load + reset a stock TextWorld env (no patches, no caches) and play the commands."""
    with stock_textworld():
        stock = make_textworld_env(fast=False)
        t0 = time.perf_counter()
        stock.load(game_file)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = stock.reset()  # stock resets re-translate the PDDL every time: the first reset is typical
        reset_s = time.perf_counter() - t0
        trace = [(state.feedback, state["admissible_commands"])]
        t0 = time.perf_counter()
        for command in commands:
            state, _, _ = stock.step(command)
            trace.append((state.feedback, state["admissible_commands"]))
        return load_s, reset_s, time.perf_counter() - t0, trace


def bench_speed(games: list[tuple[str, dict]], walk_steps: int, seed: int, repeats: int = 2) -> list[dict]:
    """Per game: the same commands on ours and on stock, alternating, ``repeats`` times; the best time of each counts
    (the machine is shared, so the minimum is the least noisy estimate, as ``timeit`` does)."""
    rows = []
    for label, spec in games:
        env, options = _make_env(spec)
        t0 = time.perf_counter()
        env.reset(options=options)
        ours_first_reset = time.perf_counter() - t0
        ours_reset, ours_steps, commands, ours_trace = _ours_walk(env, options, None, walk_steps, seed)
        game_file = str(env.game_file)
        stock_load, stock_reset, stock_steps, stock_trace = _stock_walk(game_file, commands)
        identical = _strip_banner(stock_trace) == _strip_banner(ours_trace)
        for _ in range(repeats - 1):
            reset_s, steps_s, _, _ = _ours_walk(env, options, commands, walk_steps, seed)
            ours_reset, ours_steps = min(ours_reset, reset_s), min(ours_steps, steps_s)
            load_s, reset_s, steps_s, _ = _stock_walk(game_file, commands)
            stock_load = min(stock_load, load_s)
            stock_reset, stock_steps = min(stock_reset, reset_s), min(stock_steps, steps_s)
        env.close()
        rows.append(
            {
                "game": label,
                "steps": len(commands),
                "stock_steps_per_s": len(commands) / stock_steps,
                "ours_steps_per_s": len(commands) / ours_steps,
                "step_speedup": stock_steps / ours_steps,
                "stock_load_s": stock_load,
                "stock_reset_s": stock_reset,
                "ours_first_reset_s": ours_first_reset,
                "ours_reset_s": ours_reset,
                "reset_speedup": stock_reset / ours_reset,  # a reset of an already loaded game
                "identical_trace": identical,
            }
        )
        print(
            f"  speed {label}: x{rows[-1]['step_speedup']:.1f} steps, x{rows[-1]['reset_speedup']:.0f} reset",
            flush=True,
        )
    return rows


def bench_experts(num_games: int, cache_dir: str | None, experts: list[str]) -> dict[str, Any]:
    env = gym.make("openr/ALFWorld-v0", num_games=num_games, cache_dir=cache_dir)
    pool = env.unwrapped.pool
    t0 = time.perf_counter()
    problems = {
        json.loads(pool.game_file(ref).read_text())["pddl_problem"].split("\n", 1)[1] for ref in pool.refs
    }
    results: dict[str, Any] = {
        "distinct_games": len(problems),
        "generate_or_load_s": time.perf_counter() - t0,
    }
    print(f"  {len(problems)} distinct games of {len(pool)}", flush=True)
    for expert in experts:
        per_type: dict[str, list[bool]] = defaultdict(list)
        steps, t0 = [], time.perf_counter()
        for problem_id in env.unwrapped.pool.problem_ids:
            _, info = env.reset(options={"problem_id": problem_id})
            outcome = run_expert(env, expert)
            per_type[info["task_type"]].append(outcome["won"])
            if outcome["won"]:
                steps.append(outcome["steps"])
        wins = [w for ws in per_type.values() for w in ws]
        results[expert] = {
            "games": len(wins),
            "success": sum(wins) / len(wins),
            "mean_steps_when_won": statistics.fmean(steps) if steps else None,
            "per_task_type": {t: sum(ws) / len(ws) for t, ws in sorted(per_type.items())},
            "seconds": time.perf_counter() - t0,
        }
        print(f"  expert {expert}: {results[expert]['success']:.1%} of {len(wins)}", flush=True)
    env.close()
    return results


def bench_policy(num_games: int, max_steps: int, cache_dir: str | None, model: str) -> dict[str, Any]:
    """Greedy LLM policy, all games stepped in lockstep so generation is batched."""
    try:
        from agents.engines import HFEngine
    except ImportError as exc:  # torch / transformers / the engine missing
        return {"skipped": f"agents.engines.HFEngine unavailable: {exc}"}
    t0 = time.perf_counter()
    engine = HFEngine(model)
    load_s = time.perf_counter() - t0
    model_dtype = str(next(engine.model.parameters()).dtype).removeprefix("torch.")
    envs = [
        gym.make(
            "openr/ALFWorld-v0",
            num_games=num_games,
            cache_dir=cache_dir,
            show_admissible_commands=True,
            max_observation_chars=4000,
            max_episode_steps=max_steps,
        )
        for _ in range(num_games)
    ]
    obs = [env.reset(options={"problem_id": f"gen-train-{i:06d}"})[0] for i, env in enumerate(envs)]
    done = [False] * num_games
    won = [False] * num_games
    invalid = steps = 0
    examples: list[str] = []
    t0 = time.perf_counter()
    while not all(done):
        live = [i for i in range(num_games) if not done[i]]
        # The assistant turn is opened with "> " (the observation's own command marker): the model writes a command.
        prompts = [
            [{"role": "user", "content": obs[i] + _POLICY_ASK}, {"role": "assistant", "content": "> "}]
            for i in live
        ]
        outs = engine.generate(prompts, n=1, max_new_tokens=16, temperature=0.0, stop=["\n"])
        for i, completions in zip(live, outs):
            if len(examples) < 8:
                examples.append(completions[0].text)
            obs[i], _, terminated, truncated, info = envs[i].step(completions[0].text.strip())
            steps += 1
            invalid += int(info["invalid"])
            won[i] = won[i] or bool(info["won"])
            done[i] = terminated or truncated
        print(f"  policy step {steps} ({sum(done)}/{num_games} episodes over, {sum(won)} won)", flush=True)
    result = {
        "model": model,
        "model_dtype": model_dtype,
        "games": num_games,
        "max_steps": max_steps,
        "success": sum(won) / num_games,
        "invalid_step_rate": invalid / max(steps, 1),
        "steps": steps,
        "model_load_s": load_s,
        "seconds": time.perf_counter() - t0,
        "example_outputs": examples,
    }
    for env in envs:
        env.close()
    print(
        f"  policy {model}: {result['success']:.1%} success, {result['invalid_step_rate']:.0%} invalid",
        flush=True,
    )
    return result


def _markdown(results: dict[str, Any]) -> str:
    lines = ["## Speed (same games, same commands, same process)", ""]
    lines.append(
        "| game | steps | stock steps/s | ours steps/s | x | stock load s | stock reset s | ours 1st reset s | ours reset s | x | identical |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["speed"]:
        lines.append(
            f"| {r['game']} | {r['steps']} | {r['stock_steps_per_s']:.1f} | {r['ours_steps_per_s']:.1f} | "
            f"{r['step_speedup']:.1f} | {r['stock_load_s']:.2f} | {r['stock_reset_s']:.2f} | {r['ours_first_reset_s']:.3f} | "
            f"{r['ours_reset_s']:.3f} | {r['reset_speedup']:.0f} | {r['identical_trace']} |"
        )
    s = results["speed_summary"]
    lines.append(
        f"| **all** | {s['steps']} | {s['stock_steps_per_s']:.1f} | {s['ours_steps_per_s']:.1f} | "
        f"**{s['step_speedup']:.1f}** | | {s['stock_reset_s_median']:.2f} | | {s['ours_reset_s_median']:.3f} | "
        f"**{s['reset_speedup']:.0f}** | {s['all_identical']} |"
    )
    if results.get("experts"):
        report = results["experts"]
        lines += [
            "",
            "## Scripted experts on generated games",
            "",
            f"{report['distinct_games']} distinct games (generated or loaded in {report['generate_or_load_s']:.0f} s).",
            "",
            "| expert | games | success | mean steps | per task type |",
            "|---|---|---|---|---|",
        ]
        for name in ("planner", "handcoded"):
            if name not in report:
                continue
            r = report[name]
            per = ", ".join(f"{t}: {v:.0%}" for t, v in r["per_task_type"].items())
            mean = f"{r['mean_steps_when_won']:.1f}" if r["mean_steps_when_won"] else "-"
            lines.append(f"| {name} | {r['games']} | {r['success']:.1%} | {mean} | {per} |")
    policy = results.get("policy")
    if policy:
        lines += ["", "## Greedy LLM policy (admissible commands shown)", ""]
        if "skipped" in policy:
            lines.append(f"skipped: {policy['skipped']}")
        else:
            lines += [
                "| model | games | max steps | success | invalid steps | seconds |",
                "|---|---|---|---|---|---|",
                f"| {policy['model']} | {policy['games']} | {policy['max_steps']} | {policy['success']:.1%} | "
                f"{policy['invalid_step_rate']:.0%} | {policy['seconds']:.0f} |",
            ]
    return "\n".join(lines)


@dataclass
class ALFWorldBenchConfig:
    """Benchmark openr/ALFWorld-v0: speed against stock TextWorld, scripted experts, and a greedy LLM baseline."""

    speed_games: int = 6
    """Generated games in the speed table (+ the real one)."""
    walk_steps: int = 30
    """Random admissible commands per game."""
    repeats: int = 2
    """Timed passes per engine and game (best counts)."""
    expert_games: int = 60
    """Generated games for the expert success rates."""
    policy_games: int = 6
    """Generated games for the LLM baseline (one per task type per 6)."""
    skip_real: bool = False
    """Leave the shared real game out of the speed table."""
    experts: tuple[Literal["planner", "handcoded"], ...] = ("planner", "handcoded")
    """Scripted experts to score."""
    policy_max_steps: int = 15
    """Steps per game of the LLM baseline."""
    model: str = "smollm2-135m-instruct"
    """Model of the LLM baseline (name, HF id or folder)."""
    policy: bool = True
    """Run the LLM baseline (--no-policy skips it)."""
    cache_dir: str | None = None
    """Generated-game cache (default ~/.cache/openr-gym/alfworld)."""
    seed: int = 0
    """Seeds the random walks."""
    out: str = "runs/bench_alfworld"
    """Output folder (results.json, results.md)."""


def _hardware() -> dict[str, Any]:
    """CPU capability and threads (``agents.engines.hardware``); the game benchmarks also run without torch."""
    try:
        from agents.engines.hardware import hardware_info
    except ImportError as error:
        return {"unavailable": str(error)}
    return hardware_info()


def parse_args(argv: list[str] | None = None) -> ALFWorldBenchConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(ALFWorldBenchConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    results: dict[str, Any] = {
        "args": asdict(args),
        "python": sys.version.split()[0],
        "hardware": _hardware(),
    }
    print("speed ...", flush=True)
    speed = bench_speed(
        _games(args.speed_games, args.cache_dir, not args.skip_real), args.walk_steps, args.seed, args.repeats
    )
    total_steps = sum(r["steps"] for r in speed)
    stock_time = sum(r["steps"] / r["stock_steps_per_s"] for r in speed)
    ours_time = sum(r["steps"] / r["ours_steps_per_s"] for r in speed)
    results["speed"] = speed
    results["speed_summary"] = {
        "steps": total_steps,
        "stock_steps_per_s": total_steps / stock_time,
        "ours_steps_per_s": total_steps / ours_time,
        "step_speedup": stock_time / ours_time,
        "stock_reset_s_median": statistics.median(r["stock_reset_s"] for r in speed),
        "ours_reset_s_median": statistics.median(r["ours_reset_s"] for r in speed),
        "reset_speedup": statistics.median(r["stock_reset_s"] for r in speed)
        / statistics.median(r["ours_reset_s"] for r in speed),
        "all_identical": all(r["identical_trace"] for r in speed),
    }
    if args.expert_games > 0:
        print("experts ...", flush=True)
        results["experts"] = bench_experts(args.expert_games, args.cache_dir, list(args.experts))
    if args.policy and args.policy_games > 0:
        print("policy ...", flush=True)
        results["policy"] = bench_policy(args.policy_games, args.policy_max_steps, args.cache_dir, args.model)
    table = _markdown(results)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(table + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
