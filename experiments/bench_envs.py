"""Benchmark the environments and the outcome judger; prints a table and writes JSON.

    python -m experiments.bench_envs [--data-dir ../shared/data] [--steps 20000] [--out results/bench_envs.json]

Measures: env step overhead in microseconds (judging excluded: the steps state no final answer), the judger's
throughput on MATH-500 answers (judgements/s, median / p99 ms, one call per judgement) with a cold reference cache
(fresh verifier process, parse caches cleared) and a warm one, gold solutions, the batched ``judge_many`` rate, the
share decided by exact rules, a same-run baseline that sends every pair to math-verify, and the slowest judgement. Targets from the
issue: step < 100 us; >= 1,000 cached judgements/s on one core; no judgement over the limit (5 s).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro
from rich.console import Console
from rich.table import Table

import reasoning_gym  # noqa: F401 - registers the ids
from reasoning_gym.data import shared_data_dir
from reasoning_gym.judging.canonical import parse_answer
from reasoning_gym.judging.judge import (
    MathJudger,
    _rule_form,
    _VerifyProcess,
    normalize_reference,
    rule_verdict,
)

__all__ = ["bench_env_steps", "bench_judger", "main"]


def bench_env_steps(env_id: str, steps: int, **kwargs) -> dict:
    """Mean / p99 microseconds per ``step`` on non-final steps (the judger never runs)."""
    env = gym.make(env_id, max_episode_steps=None, max_steps=10**9, **kwargs).unwrapped
    env.reset(seed=0)
    action = "We add the two numbers: 3 + 4 = 7, and keep going with the next part."
    times = np.empty(steps)
    for i in range(steps):
        if i % 15 == 0:
            env.reset()  # keep observations at a realistic length (a dozen steps)
        start = time.perf_counter_ns()
        env.step(action)
        times[i] = time.perf_counter_ns() - start
    return {
        "env": env_id,
        "mean_us": float(times.mean() / 1e3),
        "p99_us": float(np.percentile(times, 99) / 1e3),
    }


def _perturb(answer: str, shift: int) -> str:
    """A wrong answer of the same shape: the last digit moved by ``shift`` (letters get a suffix)."""
    digits = list(re.finditer(r"\d", answer))
    if not digits:
        return answer + "x"
    k = digits[-1].start()
    return answer[:k] + str((int(answer[k]) + shift) % 10) + answer[k + 1 :]


def _timed_pass(judger: MathJudger, pairs: list[tuple[str, str]]) -> dict:
    times = []
    for pair in pairs:
        start = time.perf_counter()
        judger.judge(*pair)
        times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1e3
    return {
        "judgements": len(pairs),
        "per_s": float(len(pairs) / (times_ms.sum() / 1e3)),
        "median_ms": float(np.median(times_ms)),
        "p99_ms": float(np.percentile(times_ms, 99)),
        "max_ms": float(times_ms.max()),
        "slowest": pairs[int(times_ms.argmax())][0][:80],
    }


def _clear_parse_caches() -> _VerifyProcess:
    """Forget every parsed reference and prediction (the in-process exact forms and the verifier's parses);
    returns a fresh, started verifier (started outside any timed pass)."""
    parse_answer.cache_clear()
    normalize_reference.cache_clear()
    _rule_form.cache_clear()
    for worker in _VerifyProcess._instances.values():
        worker.kill()  # a fresh verifier: nothing parsed yet
    worker = _VerifyProcess.shared()
    worker.verify([("1", "2")], timeout=60.0)
    return worker


def _math_verify_only(pairs: list[tuple[str, str]], timeout: float) -> dict:
    """Baseline in the same run: every pair through a fresh math-verify worker whose references are already parsed
    (what the judger cost before the exact rules), predictions new."""
    worker = _clear_parse_caches()
    worker.verify([(ref, ref) for _, ref in pairs], timeout=600.0)  # parse every reference once, untimed
    times = []
    for pred, ref in pairs:
        start = time.perf_counter()
        worker.verify([(pred, ref)], timeout=timeout)
        times.append(time.perf_counter() - start)
    return {"judgements": len(pairs), "per_s": float(len(pairs) / sum(times))}


def bench_judger(math500: list[dict], timeout: float) -> dict:
    """Cold vs cached-reference judging of new wrong answers (perturbed gold) and the gold answers themselves."""
    answers = [row["answer"] for row in math500]
    cold_pairs = [(f"\\boxed{{{_perturb(a, 1)}}}", a) for a in answers]
    warm_pairs = [(f"\\boxed{{{_perturb(a, 2)}}}", a) for a in answers]
    gold_pairs = [(row["solution"], row["answer"]) for row in math500]
    _clear_parse_caches()
    judger = MathJudger(timeout=timeout)
    cold = _timed_pass(judger, cold_pairs)
    warm = _timed_pass(judger, warm_pairs)  # references parsed in the cold pass; predictions new
    gold = _timed_pass(MathJudger(timeout=timeout), gold_pairs)  # full solutions: extraction + equal answers
    _clear_parse_caches()
    fresh = MathJudger(timeout=timeout)
    batch_pairs = [(f"\\boxed{{{_perturb(a, 3)}}}", a) for a in answers]
    start = time.perf_counter()
    fresh.judge_many(batch_pairs)
    batch_per_s = len(batch_pairs) / (time.perf_counter() - start)
    repeat = _timed_pass(judger, warm_pairs)  # the verdict cache (e.g. majority votes repeat answers)
    decided = sum(rule_verdict(_perturb(a, 2), normalize_reference(a)) is not None for a in answers)
    baseline = _math_verify_only([(_perturb(a, 2), a) for a in answers], timeout)
    return {
        "cold_reference": cold,
        "cached_reference": warm,
        "gold_solutions": gold,
        "verdict_cache": repeat,
        "batch_per_s": batch_per_s,
        "math_verify_only": baseline,
        "decided_by_exact_rules": decided / len(answers),
        "speedup_vs_math_verify_only": warm["per_s"] / baseline["per_s"],
    }


@dataclass
class EnvBenchConfig:
    """Benchmark the environments and the outcome judger."""

    data_dir: Path | None = field(default_factory=shared_data_dir)
    """Shared data folder holding math/test500.jsonl (the judger rows are skipped without it)."""
    steps: int = 20_000
    """Env steps timed per environment."""
    timeout: float = 5.0
    """The judger's time limit per judgement, in seconds."""
    out: Path = Path("results/bench_envs.json")
    """JSON output file."""


def parse_args(argv: list[str] | None = None) -> EnvBenchConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(EnvBenchConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    console = Console()
    results: dict = {"env_steps": [bench_env_steps("openr/Arithmetic-v0", args.steps, level=3)]}
    math_path = args.data_dir / "math" / "test500.jsonl" if args.data_dir else None
    if math_path and math_path.is_file():
        results["env_steps"].append(bench_env_steps("openr/MATH-v0", args.steps, data_path=str(math_path)))
        math500 = [json.loads(line) for line in math_path.open()]
        results["judger"] = bench_judger(math500, args.timeout)
    else:
        console.print("[yellow]MATH-500 not found (--data-dir): judger benchmark skipped[/yellow]")

    table = Table(title="env step overhead (judging excluded; target < 100 us)")
    for column in ("env", "mean us/step", "p99 us/step"):
        table.add_column(column)
    for row in results["env_steps"]:
        table.add_row(row["env"], f"{row['mean_us']:.1f}", f"{row['p99_us']:.1f}")
    console.print(table)
    if "judger" in results:
        table = Table(
            title=f"MathJudger on MATH-500 answers (limit {args.timeout:.0f} s; target >= 1000/s cached)"
        )
        for column in ("pass", "judgements/s", "median ms", "p99 ms", "max ms"):
            table.add_column(column)
        for name in ("cold_reference", "cached_reference", "gold_solutions", "verdict_cache"):
            row = results["judger"][name]
            table.add_row(
                name,
                f"{row['per_s']:.0f}",
                f"{row['median_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['max_ms']:.1f}",
            )
        judger = results["judger"]
        table.add_row("judge_many (batch, cold)", f"{judger['batch_per_s']:.0f}", "", "", "")
        table.add_row("math-verify only (baseline)", f"{judger['math_verify_only']['per_s']:.0f}", "", "", "")
        console.print(table)
        console.print(
            f"decided by exact rules (no math-verify): {judger['decided_by_exact_rules']:.1%} of cached-pass pairs; "
            f"cached vs math-verify only: {judger['speedup_vs_math_verify_only']:.1f}x"
        )
        slowest = max(
            results["judger"][k]["max_ms"] for k in ("cold_reference", "cached_reference", "gold_solutions")
        )
        console.print(f"slowest judgement: {slowest:.0f} ms (limit {args.timeout * 1e3:.0f} ms)")
    from agents.engines.hardware import hardware_info

    results["config"] = asdict(args)
    results["hardware"] = hardware_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
