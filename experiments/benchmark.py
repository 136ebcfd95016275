"""Test-time scaling benchmark: search agents x compute budgets on one environment.

Runs every chosen agent at several budgets on the same problems and reports accuracy against compute (generated
tokens, prompt tokens the engine processed, engine and PRM calls, wall time): a table on stdout, ``results.json``,
TensorBoard scalars and ``accuracy_vs_tokens.png`` (OpenR's test-time scaling figure) in the output folder.

With no arguments it runs offline on ``openr/Arithmetic-v0`` with SmolLM2-135M-Instruct in a few minutes on a
2-core CPU. Without ``--prm`` the agents use outcome-free rules (majority vote; beam search and MCTS are guided by
the policy's own step likelihood); with ``--prm PATH`` they are PRM-guided and PRM-selected.

    python -m experiments.benchmark
    python -m experiments.benchmark --env openr/MATH-v0 --num-problems 50 --prm runs/prm/final --budgets 1 4 16
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import tyro

__all__ = ["AGENTS", "BenchmarkConfig", "draw_problems", "main", "parse_args", "run_agent", "summarize"]

# agent key -> (class name in ``agents``, budget -> config overrides). Greedy has no budget: it runs once.
AGENTS: dict[str, tuple[str, Callable[[int], dict[str, Any]] | None]] = {
    "greedy": ("Greedy", None),
    "best_of_n": ("BestOfN", lambda b: {"n": b}),
    "beam_search": ("BeamSearch", lambda b: {"beam_width": b, "num_expansions": 2}),
    "mcts": ("MCTS", lambda b: {"num_simulations": 2 * b, "num_expansions": 2}),
}


AgentName = Literal["greedy", "best_of_n", "beam_search", "mcts"]


@dataclass
class BenchmarkConfig:
    """Test-time scaling benchmark: search agents x compute budgets on one environment."""

    env: str = "openr/Arithmetic-v0"
    """Registered env id."""
    env_kwargs: str = "{}"
    """JSON keyword arguments for gym.make, e.g. '{"level": 2}'."""
    data: str | None = None
    """Data path for MATH / GSM8K (env argument data_path)."""
    model: str = "smollm2-135m-instruct"
    """Policy: name, HF id or local folder."""
    engine: Literal["hf", "vllm"] = "hf"
    """Generation backend."""
    dtype: str = "auto"
    """Model dtype (hf engine): auto (bf16 where the device runs it natively, else fp32), bfloat16, float32."""
    threads: int | None = None
    """Torch threads for the hf engine; default: 1 when the machine is busy (load average >= cores), else all
    cores (a busy 2-core machine ran 20x faster with 1 thread than with 2)."""
    ray: str | None = None
    """Run the engine as actors on a Ray cluster (``agents.engines.RayEngine``, docs/distributed.md): its address
    (``host:6379``, ``auto``) or ``local`` (a private instance on this machine); default: in-process."""
    actors: int = 2
    """Engine actors with ``--ray`` (each with ``--threads`` threads, default 1)."""
    instruction: str | None = None
    """Replace the env's instruction (env argument)."""
    prm: str | None = None
    """Folder of a trained PRM (rewards.prm.load_prm); default: none."""
    agents: tuple[AgentName, ...] = ("greedy", "best_of_n", "beam_search", "mcts")
    """Agents to run."""
    budgets: tuple[int, ...] = (1, 2, 4)
    """Budget levels: N for best-of-N, beam width, MCTS simulations / 2."""
    num_problems: int = 12
    """Problems, drawn by the env's RNG from --seed."""
    seed: int = 0
    """Drives problem choice and sampling."""
    max_steps: int = 3
    """Reasoning steps per episode."""
    max_new_tokens: int = 48
    """Tokens per step."""
    temperature: float = 0.7
    """Sampling temperature of the steps."""
    selection: str = "auto"
    """Answer-selection rule (agents.search.selection)."""
    batch_problems: int = 8
    """Problems searched together."""
    out: str | None = None
    """Output folder (default runs/benchmark/<env>-<time>)."""
    progress: bool = True
    """Show progress bars (--no-progress hides them)."""


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The benchmark's config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    config = tyro.cli(BenchmarkConfig, args=argv, description=__doc__)
    if config.num_problems < 1 or any(b < 1 for b in config.budgets):
        raise SystemExit("--num-problems and every budget must be >= 1")
    return config


def draw_problems(env: Any, num_problems: int, seed: int) -> list[dict[str, str]]:
    """``num_problems`` reset options, drawn by the env's own RNG from ``seed`` (works for every env)."""
    problems, seen = [], set()
    for offset in range(num_problems * 20):
        _, info = env.reset(seed=seed + offset)
        problem_id = info.get("problem_id")
        if problem_id is None:
            raise ValueError("the env's info has no problem_id; cannot fix the benchmark problems")
        if problem_id not in seen:
            seen.add(problem_id)
            problems.append({"problem_id": problem_id})
        if len(problems) == num_problems:
            break
    return problems


def build_engine(args: BenchmarkConfig) -> Any:
    from agents import engines

    if args.ray:
        return engines.RayEngine(
            args.model,
            num_actors=args.actors,
            backend=args.engine,
            threads_per_actor=args.threads or 1,
            engine_kwargs={"dtype": args.dtype, **({"seed": args.seed} if args.engine == "vllm" else {})},
            address=args.ray,
            seed=args.seed,
        )
    if args.engine == "vllm":
        return engines.VLLMEngine(args.model, dtype=args.dtype, seed=args.seed)
    return engines.HFEngine(args.model, dtype=args.dtype, num_threads=args.threads)


def auto_threads() -> int:
    """All usable cores on a quiet machine, 1 on a busy one (OpenMP spin-waits collapse under contention)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if os.getloadavg()[0] >= cores else cores


def run_agent(
    agent: Any, env: Any, problems: Sequence[dict], progress: Any = None
) -> tuple[list[dict], float]:
    """Solve ``problems`` batch by batch (updating ``progress``); per-problem results and total seconds."""
    results: list[dict] = []
    size = agent.config.batch_problems
    started = time.perf_counter()
    for start in range(0, len(problems), size):
        batch = problems[start : start + size]
        results.extend(agent.solve_many(env, batch))
        if progress is not None:
            progress.update(len(batch))
    return results, time.perf_counter() - started


def summarize(results: Sequence[dict], seconds: float) -> dict[str, float]:
    """Means per problem over a run."""
    count = max(len(results), 1)

    def mean(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in results) / count

    full = sum(r.get("full_prompt_tokens", 0) for r in results)
    return {
        "accuracy": mean("correct"),
        "pass_at_k": mean("pass_at_k"),
        "generated_tokens": mean("generated_tokens"),
        "prompt_tokens": mean("prompt_tokens"),
        "full_prompt_tokens": mean("full_prompt_tokens"),
        "prompt_reuse_ratio": sum(r["prompt_tokens"] for r in results) / full if full else 1.0,
        "ideal_reuse_ratio": sum(r["ideal_prompt_tokens"] for r in results) / full if full else 1.0,
        "engine_calls": mean("engine_calls"),
        "prm_calls": mean("prm_calls"),
        "seconds_per_problem": seconds / count,
        "seconds": seconds,
    }


def _table(rows: Sequence[dict]) -> Any:
    from rich.table import Table

    table = Table(title="test-time scaling", show_lines=False)
    columns = [
        ("agent", "agent", "{}"),
        ("budget", "budget", "{}"),
        ("acc", "accuracy", "{:.3f}"),
        ("pass@k", "pass_at_k", "{:.3f}"),
        ("gen tok/prob", "generated_tokens", "{:.0f}"),
        ("prompt tok/prob", "prompt_tokens", "{:.0f}"),
        ("processed/full", "prompt_reuse_ratio", "{:.2f}"),
        ("ideal/full", "ideal_reuse_ratio", "{:.2f}"),
        ("calls/prob", "engine_calls", "{:.1f}"),
        ("PRM calls/prob", "prm_calls", "{:.1f}"),
        ("s/prob", "seconds_per_problem", "{:.2f}"),
    ]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header == "agent" else "right")
    for row in rows:
        table.add_row(*[fmt.format(row[key]) for _, key, fmt in columns])
    return table


def plot(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Accuracy against mean generated tokens per problem, one line per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for agent in dict.fromkeys(row["agent"] for row in rows):
        points = sorted(
            (r["generated_tokens"], r["accuracy"], r["budget"]) for r in rows if r["agent"] == agent
        )
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=agent)
        for x, y, budget in points:
            ax.annotate(str(budget), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import gymnasium as gym
    from rich.console import Console
    from tqdm.auto import tqdm

    import agents
    import reasoning_gym  # noqa: F401  (registers openr/*)
    from agents.base import set_global_seed
    from agents.engines.hardware import engine_dtype, hardware_info

    console = Console(width=None if sys.stdout.isatty() else 160)  # logs keep the table's full width
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("runs") / "benchmark" / f"{args.env.split('/')[-1]}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    set_global_seed(args.seed)

    env_kwargs = json.loads(args.env_kwargs)
    if args.data is not None:
        env_kwargs["data_path"] = args.data
    if args.instruction is not None:
        env_kwargs["instruction"] = args.instruction
    env = gym.make(args.env, **env_kwargs)
    problems = draw_problems(env, args.num_problems, args.seed)

    started = time.perf_counter()
    if args.threads is None:
        args.threads = auto_threads()
    engine = build_engine(args)
    prm = None
    if args.prm:
        from rewards.prm import load_prm

        prm = load_prm(args.prm)
    console.print(
        f"[bold]engine[/] {args.engine}:{args.model} ({args.threads} threads) and PRM {args.prm} ready in {time.perf_counter() - started:.1f} s"
    )

    runs = [(key, None) if AGENTS[key][1] is None else (key, b) for key in args.agents for b in args.budgets]
    runs = list(dict.fromkeys(runs))  # greedy once
    rows, records = [], []
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    total = len(runs) * len(problems)
    with tqdm(total=total, desc="problems", disable=not args.progress, unit="prob") as progress:
        for key, budget in runs:
            class_name, overrides = AGENTS[key]
            config = overrides(budget) if overrides else {}
            agent = getattr(agents, class_name)(
                engine,
                env,
                prm=prm,
                seed=args.seed,
                max_steps=args.max_steps,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                selection=args.selection,
                batch_problems=args.batch_problems,
                **config,
            )
            progress.set_postfix_str(f"{key} budget={budget}")
            reset = getattr(engine, "reset_prefix_cache", None)
            if reset is not None:  # each row's prompt re-use is its own, not hits left by earlier rows
                reset()
            results, seconds = run_agent(agent, env, problems, progress)
            row = {
                "agent": key,
                "budget": budget or 1,
                "config": asdict(agent.config),
                **summarize(results, seconds),
            }
            rows.append(row)
            records.append({"agent": key, "budget": budget or 1, "results": results})
            step = int(round(row["generated_tokens"]))
            for name in (
                "accuracy",
                "pass_at_k",
                "prompt_reuse_ratio",
                "engine_calls",
                "seconds_per_problem",
            ):
                writer.add_scalar(f"{key}/{name}_vs_tokens", row[name], global_step=step)
            writer.add_scalar(
                f"{key}/generated_tokens_vs_budget", row["generated_tokens"], global_step=budget or 1
            )
            writer.add_scalar(f"{key}/accuracy_vs_budget", row["accuracy"], global_step=budget or 1)
            progress.write(
                f"{key:12s} budget={budget or 1:<3d} acc={row['accuracy']:.3f} tokens={row['generated_tokens']:.0f}"
                f" processed/full={row['prompt_reuse_ratio']:.2f} {seconds:.1f}s"
            )
    writer.close()

    summary = {
        "args": asdict(args),
        "hardware": hardware_info(model_dtype=engine_dtype(engine)),
        "problems": [p["problem_id"] for p in problems],
        "rows": rows,
        "per_problem": records,
        "wall_time": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    title = f"{args.env} | {os.path.basename(str(args.model))} | {'PRM' if prm else 'no PRM'} | {len(problems)} problems"
    png = plot(rows, out / "accuracy_vs_tokens.png", title)
    console.print(_table(rows))
    console.print(
        f"results: {out / 'results.json'}\nplot: {png}\ntensorboard: tensorboard --logdir {out / 'tensorboard'}"
    )
    return summary


if __name__ == "__main__":
    main()
