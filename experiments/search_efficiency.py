"""Prefix re-use in tree search: prompt tokens the engine actually processes, with and without prefix caching.

Beam search and MCTS send, at every step, prompts that extend a prompt already sent (the parent's). Re-sending the
whole prompt each time (how OpenR drives its engine) costs ``full_prompt_tokens``; an engine with prefix caching
(vLLM) processes only the new suffix. This runs the same agents on the same problems with a vLLM engine with
prefix caching on and then off (or the transformers engine with its KV prefix cache on and off, ``--engine hf``),
and prints processed / full prompt tokens and the wall-time ratio.

    python -m experiments.search_efficiency                     # vLLM (CPU or GPU), SmolLM2, Arithmetic
    python -m experiments.search_efficiency --agents beam_search --budget 4 --num-problems 16
    python -m experiments.search_efficiency --engine hf --threads 1 --agents best_of_n beam_search mcts
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any, Literal

import tyro

from experiments.benchmark import AGENTS, AgentName, draw_problems, summarize

__all__ = ["SearchEfficiencyConfig", "main"]


@dataclass
class SearchEfficiencyConfig:
    """Prefix re-use in tree search: prompt tokens processed with and without prefix caching."""

    env: str = "openr/Arithmetic-v0"
    """Registered env id."""
    env_kwargs: str = "{}"
    """JSON keyword arguments for gym.make."""
    model: str = "smollm2-135m-instruct"
    """Policy: name, HF id or local folder."""
    agents: tuple[AgentName, ...] = ("beam_search", "mcts")
    """Search agents to run."""
    budget: int = 2
    """Budget level (as in experiments.benchmark: N, beam width, MCTS simulations / 2)."""
    num_problems: int = 8
    """Problems, drawn by the env's RNG from --seed."""
    seed: int = 0
    """Drives problem choice and sampling."""
    max_steps: int = 4
    """Reasoning steps per episode."""
    max_new_tokens: int = 48
    """Tokens per step."""
    temperature: float = 0.7
    """Sampling temperature of the steps."""
    eager: bool = False
    """vLLM enforce_eager (faster start, slower decode)."""
    block_size: int | None = None
    """vLLM KV block size (CPU default 128); prefix caching reuses whole blocks only."""
    engine: Literal["vllm", "hf"] = "vllm"
    """Backend (hf: HFEngine)."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where the device runs it natively, else fp32), bfloat16, float32."""
    threads: int | None = None
    """Torch threads (hf engine)."""
    prefix_cache_tokens: int = 16384
    """HFEngine prefix-cache budget when on."""
    repeats: int = 1
    """On/off pairs per agent (wall-time ratio = their median); vllm: order alternates on-off, off-on."""
    out: str = "runs/search_efficiency.json"
    """JSON output file."""


def parse_args(argv: Sequence[str] | None = None) -> SearchEfficiencyConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(SearchEfficiencyConfig, args=argv, description=__doc__)


def build_engine(args: SearchEfficiencyConfig, prefix_caching: bool, loaded: dict) -> Any:
    """A vLLM engine, or an HFEngine over one model loaded once for both halves (``loaded`` keeps it)."""
    if args.engine == "hf":
        from agents.engines import HFEngine, load_model

        if "model" not in loaded:
            loaded["model"] = load_model(args.model, dtype=args.dtype)
        model, tokenizer = loaded["model"]
        budget = args.prefix_cache_tokens if prefix_caching else 0
        engine = HFEngine(model, tokenizer, num_threads=args.threads, prefix_cache_tokens=budget)
        engine.generate(["Warm up the kernels."], max_new_tokens=4, temperature=0)  # not in either timing
        return engine
    from agents.engines import VLLMEngine

    engine = VLLMEngine(
        args.model,
        dtype=args.dtype,
        seed=args.seed,
        enable_prefix_caching=prefix_caching,
        enforce_eager=args.eager,
        in_process=True,  # no engine-core RPC: a busy machine made the multiprocess engine time out
        **({"block_size": args.block_size} if args.block_size else {}),
    )
    engine.generate(["Warm up the kernels."] * 4, max_new_tokens=8, temperature=0.7, seed=0)  # not timed
    return engine


def agent_keys(args: SearchEfficiencyConfig) -> list[str]:
    return list(args.agents)


def measure(
    args: SearchEfficiencyConfig,
    engine: Any,
    key: str,
    prefix_caching: bool,
    env: Any,
    problems: list[dict],
    repeat: int = 0,
) -> dict:
    """One agent on every problem with this engine; the row printed as soon as it is measured."""
    import agents

    class_name, overrides = AGENTS[key]
    config = overrides(args.budget) if overrides else {}
    agent = getattr(agents, class_name)(
        engine,
        env,
        seed=args.seed,
        max_steps=args.max_steps,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_problems=len(problems),
        **config,
    )
    reset = getattr(engine, "reset_prefix_cache", None)
    if callable(reset):  # each agent starts cold: no prompts cached by the agent before it
        reset()
    started, cpu_started = time.perf_counter(), time.process_time()
    results = agent.solve_many(env, problems)
    row = {"agent": key, "engine": args.engine, "prefix_caching": prefix_caching, "repeat": repeat}
    row.update(summarize(results, time.perf_counter() - started))
    # CPU seconds of this process: on a shared machine far steadier than wall time (the engine process of an
    # out-of-process vLLM engine is not included)
    row["cpu_seconds"] = time.process_time() - cpu_started
    cache = getattr(engine, "prefix_cache", None)
    if cache is not None:
        row["prefix_cache_tokens_stored"] = cache.tokens
        row["prefix_cache_mb"] = cache.nbytes / 2**20
    print(f"[measured] {json.dumps(row)}", flush=True)  # partial results survive an interrupted run
    return row


def run(
    args: SearchEfficiencyConfig,
    prefix_caching: bool,
    env: Any,
    problems: list[dict],
    loaded: dict | None = None,
    repeat: int = 0,
) -> list[dict]:
    """Every agent with one engine (vLLM: one engine start per setting)."""
    engine = build_engine(args, prefix_caching, loaded if loaded is not None else {})
    try:
        return [measure(args, engine, key, prefix_caching, env, problems, repeat) for key in agent_keys(args)]
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()


def run_interleaved(args: SearchEfficiencyConfig, env: Any, problems: list[dict]) -> list[dict]:
    """HF: two engines over one model; per agent and repeat, cache on then off back to back, so the load of a
    shared machine hits both halves alike."""
    loaded: dict = {}
    engines = {setting: build_engine(args, setting, loaded) for setting in (True, False)}
    return [
        measure(args, engines[setting], key, setting, env, problems, repeat)
        for repeat in range(args.repeats)
        for key in agent_keys(args)
        for setting in (True, False)
    ]


def _hardware(args: SearchEfficiencyConfig) -> dict[str, Any]:
    """CPU capability and the model dtype the engines ran with (``--dtype`` resolved on the default device)."""
    import torch

    from agents.engines.hardware import hardware_info
    from agents.engines.models import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return hardware_info(model_dtype=resolve_dtype(args.dtype, device))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    import gymnasium as gym

    import reasoning_gym  # noqa: F401

    env = gym.make(args.env, **json.loads(args.env_kwargs))
    problems = draw_problems(env, args.num_problems, args.seed)
    if args.engine == "hf":
        rows = run_interleaved(args, env, problems)
    else:  # one in-process engine at a time; alternating the order cancels a steady drift in machine load
        rows = []
        for repeat in range(args.repeats):
            for setting in (True, False) if repeat % 2 == 0 else (False, True):
                rows += run(args, setting, env, problems, repeat=repeat)
        rows.sort(key=lambda row: row["repeat"])  # stable: on/off rows stay paired by repeat
    print(
        f"{'agent':12s} {'caching':>7s} {'processed/prob':>14s} {'full/prob':>10s} {'processed/full':>14s} {'s':>7s}"
        f" {'cpu s':>7s}"
    )
    for row in rows:
        print(
            f"{row['agent']:12s} {'on' if row['prefix_caching'] else 'off':>7s} {row['prompt_tokens']:14.0f}"
            f" {row['full_prompt_tokens']:10.0f} {row['prompt_reuse_ratio']:14.2f} {row['seconds']:7.1f}"
            f" {row['cpu_seconds']:7.1f}  (a perfect prefix cache: {row['ideal_reuse_ratio']:.2f})"
        )
    for key in dict.fromkeys(row["agent"] for row in rows):
        on = [r for r in rows if r["agent"] == key and r["prefix_caching"]]
        off = [r for r in rows if r["agent"] == key and not r["prefix_caching"]]
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(on, off)]
        cpu = [a["cpu_seconds"] / b["cpu_seconds"] for a, b in zip(on, off)]
        print(
            f"{key}: processed prompt tokens with caching / without = "
            f"{on[0]['prompt_tokens'] / max(off[0]['prompt_tokens'], 1):.2f}; wall time on / off = "
            f"{median(ratios):.2f}"
            + (f" (median of {' '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else "")
            + f"; CPU time on / off = {median(cpu):.2f}"
            + (f" (median of {' '.join(f'{r:.2f}' for r in cpu)})" if len(cpu) > 1 else "")
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": asdict(args), "hardware": _hardware(args), "rows": rows}, indent=2)
    )
    return rows


if __name__ == "__main__":
    main()
