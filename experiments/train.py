"""Train (or just evaluate) an RL / SFT agent on an ``openr/*`` environment, with held-out evaluation and curves.

Examples::

    # supervised warm-start on Arithmetic worked solutions (level 1)
    python experiments/train.py --agent sft --env openr/Arithmetic-v0 --env-kwargs '{"level": 1}' \\
        --steps 30 --log-dir runs/sft --save runs/sft/agent
    # GRPO from the warm-start, evaluated every 5 updates on 64 held-out problems
    python experiments/train.py --agent grpo --env openr/Arithmetic-v0 --env-kwargs '{"levels": [1, 2]}' \\
        --init runs/sft/agent --steps 20 --eval-every 5 --log-dir runs/grpo --save runs/grpo/agent
    # pass@1 / pass@8 per level of a saved policy
    python experiments/train.py --eval-only --init runs/sft/agent --levels 1 2 3 --eval-problems 50 --pass-k 8

Config fields of the agent's dataclass are set with ``--set name=value`` (e.g. ``--set group_size=8``).
Logs: stdout, ``progress.csv`` and TensorBoard events in ``--log-dir``; ``curves.png`` and ``results.json`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

HELD_OUT_SEED_BASE = 1_000_000_000
"""Evaluation problems come from reset seeds >= this; training draws fresh seeds from the agent's own RNG, which
practically never hits this small range (and the Arithmetic generator's problem id is drawn from the seed)."""

AGENTS = {"grpo": "agents.rl.grpo:GRPO", "ppo": "agents.rl.ppo:PPO", "sft": "agents.rl.sft:SFT"}


def _import(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(agent_class: Any, seed: int, log_dir: str | None, overrides: list[str]) -> Any:
    config_class = agent_class.config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {"seed": seed, "log_dir": log_dir}
    for item in overrides:
        name, _, raw = item.partition("=")
        if name not in fields:
            raise SystemExit(f"{config_class.__name__} has no field {name!r}; fields: {sorted(fields)}")
        values[name] = _parse_value(raw)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    if "log_formats" in values:
        values["log_formats"] = tuple(values["log_formats"])
    return config_class(**values)


def load_policy(model_name: str, init: str | None) -> tuple[Any, Any]:
    """fp32 master weights (training runs under bf16 autocast); ``init`` is a saved agent folder or HF folder."""
    import torch

    from agents.engines import load_model

    path = model_name
    if init:
        folder = Path(init)
        path = str(folder / "policy") if (folder / "policy").is_dir() else str(folder)
    return load_model(path, dtype=torch.float32)


def held_out_seeds(count: int) -> list[int]:
    return [HELD_OUT_SEED_BASE + i for i in range(count)]


def evaluate_levels(
    agent: Any, env_id: str, levels: list[int], problems: int, pass_k: int, temperature: float
):
    """Per level: greedy accuracy (pass@1) and pass@k at ``temperature`` on the same held-out problems."""
    rows = {}
    for level in levels:
        agent.env_kwargs = {"level": level}
        greedy = agent.evaluate(held_out_seeds(problems), k=1, temperature=0.0, env=env_id)
        row = {"greedy_accuracy": greedy["accuracy"], "greedy_answered": greedy["answered"]}
        if pass_k > 1:
            sampled = agent.evaluate(held_out_seeds(problems), k=pass_k, temperature=temperature, env=env_id)
            row.update(
                {
                    "sampled_pass@1": sampled["accuracy"],
                    f"pass@{pass_k}": sampled[f"pass@{pass_k}"],
                    "sampled_answered": sampled["answered"],
                }
            )
        rows[level] = row
        print(f"level {level}: {json.dumps(row)}", flush=True)
    return rows


def plot_progress(csv_path: Path, png_path: Path, title: str = "") -> Path | None:
    """Learning curves from an SB3 ``progress.csv`` (reward, accuracy, held-out accuracy, KL, losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not csv_path.is_file():
        return None
    from experiments.plot_rl import progress_series, read_progress

    rows = read_progress(csv_path)
    if not rows:
        return None

    def series(key: str) -> tuple[list[float], list[float]]:
        return progress_series(rows, key)

    panels = [
        ("reward / accuracy", ["rollout/ep_rew_mean", "rollout/accuracy", "eval/accuracy"]),
        ("KL to reference", ["train/kl"]),
        ("losses", ["train/policy_loss", "train/value_loss", "train/loss"]),
        ("entropy / clip fraction", ["train/entropy", "train/clip_fraction"]),
    ]
    panels = [(name, keys) for name, keys in panels if any(series(key)[0] for key in keys)]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (name, keys) in zip(axes[0], panels):
        for key in keys:
            xs, ys = series(key)
            if xs:
                axis.plot(xs, ys, marker="o" if key.startswith("eval/") else None, label=key)
        axis.set_title(name)
        axis.set_xlabel("policy updates")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", choices=sorted(AGENTS), default="grpo")
    parser.add_argument("--env", default="openr/Arithmetic-v0")
    parser.add_argument("--env-kwargs", default="{}", help="JSON kwargs for gym.make, e.g. '{\"level\": 1}'")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name, HF id or folder")
    parser.add_argument("--init", default=None, help="start from a saved agent folder (or HF folder)")
    parser.add_argument("--steps", type=int, default=10, help="policy updates (SFT: optimizer steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--save", default=None, help="folder for the trained agent")
    parser.add_argument("--eval-problems", type=int, default=64, help="held-out problems per evaluation")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every N updates (0: start and end)"
    )
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --init/--model per level")
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 2, 3], help="levels for --eval-only")
    parser.add_argument("--pass-k", type=int, default=8, help="k for pass@k in --eval-only")
    parser.add_argument("--eval-temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all allowed CPUs)")
    parser.add_argument(
        "--skip-initial-eval", action="store_true", help="no held-out evaluation before training"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    args = parser.parse_args(argv)

    import torch

    import reasoning_gym  # noqa: F401
    from agents.engines import HFEngine
    from agents.rl.callbacks import EvalCallback

    if args.threads:
        torch.set_num_threads(args.threads)
    env_kwargs = json.loads(args.env_kwargs)
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_policy(args.model, args.init)
    engine = HFEngine(model, tokenizer, num_threads=args.threads)
    agent_class = _import(AGENTS[args.agent])
    config = build_config(agent_class, args.seed, str(log_dir) if log_dir else None, args.set)
    agent = agent_class(engine, args.env, config, env_kwargs=env_kwargs)
    started = time.time()
    results: dict[str, Any] = {"command": " ".join(sys.argv), "config": dataclasses.asdict(config)}

    if args.eval_only:
        results["levels"] = evaluate_levels(
            agent, args.env, args.levels, args.eval_problems, args.pass_k, args.eval_temperature
        )
    else:
        seeds = held_out_seeds(args.eval_problems)
        evaluator = (
            EvalCallback(
                seeds, eval_freq=args.eval_every or 10**9, evaluate_at_start=not args.skip_initial_eval
            )
            if args.eval_problems
            else None
        )
        callbacks: list[Any] = [evaluator] if evaluator else []
        if args.max_minutes:
            deadline = started + 60 * args.max_minutes
            callbacks.append(lambda locals_, globals_: time.time() < deadline)
        agent.learn(args.steps, callback=callbacks or None)
        if evaluator:
            if not evaluator.history or evaluator.history[-1][0] != agent.num_timesteps:
                evaluator.num_timesteps = agent.num_timesteps
                evaluator._evaluate()
                agent.logger.dump(step=agent.num_timesteps)
            results["eval"] = [{"updates": step, **metrics} for step, metrics in evaluator.history]
            print(f"held-out accuracy: {[round(m['accuracy'], 3) for _, m in evaluator.history]}", flush=True)
        if args.save:
            agent.save(args.save)
        if log_dir:
            png = plot_progress(
                log_dir / "progress.csv", log_dir / "curves.png", f"{args.agent} on {args.env}"
            )
            results["curves"] = str(png) if png else None
    results["wall_seconds"] = time.time() - started
    if log_dir:
        (log_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
