"""HFEngine decode throughput with its grouped-matmul decode attention against transformers' SDPA, same run.

Why: the transformers engine's throughput stopped growing past batch 8 (38 / 56 / 58 / 47 tok/s at B = 1 / 8 / 32
/ 64); profiling showed SDPA with a padding mask (KV heads repeated, bf16 CPU kernel) taking as long as all the
linear layers. This measures ``HFEngine(fast_attention=True)`` against ``fast_attention=False`` on the same
prompts, alternating the two settings per batch size so a shared machine's load hits both alike.

    python -m experiments.bench_hf_decode --threads 1 --batch-sizes 1 8 32 64
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

__all__ = ["HFDecodeBenchConfig", "main"]


@dataclass
class HFDecodeBenchConfig:
    """HFEngine decode throughput with grouped-matmul decode attention against transformers' SDPA, same run."""

    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where the device runs it natively, else fp32), bfloat16, float32."""
    threads: int = 1
    """Torch CPU threads."""
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    """Prompts per generate call."""
    max_new_tokens: int = 64
    """New tokens per sequence."""
    temperatures: tuple[float, ...] = (0.0, 0.7)
    """Sampling temperatures (0: greedy)."""
    out: str = "runs/bench_hf_decode.json"
    """JSON output file."""


def parse_args(argv: Sequence[str] | None = None) -> HFDecodeBenchConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(HFDecodeBenchConfig, args=argv, description=__doc__)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    from agents.engines import HFEngine, load_model
    from agents.engines.hardware import hardware_info

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    engines = {
        fast: HFEngine(model, tokenizer, num_threads=args.threads, prefix_cache_tokens=0, fast_attention=fast)
        for fast in (True, False)
    }
    instruction = "Solve the problem step by step."
    questions = [f"What is {i} * {i + 3} + {2 * i}? Explain each step." for i in range(max(args.batch_sizes))]
    prompts = [engines[True].step_prompt(q, [], instruction) for q in questions]
    engines[True].generate(prompts[:2], max_new_tokens=4, temperature=0)  # warm-up, outside the timings
    rows = []
    for batch in args.batch_sizes:
        for temperature in args.temperatures:
            for fast in (True, False):
                started = time.perf_counter()
                groups = engines[fast].generate(
                    prompts[:batch], max_new_tokens=args.max_new_tokens, temperature=temperature, seed=0
                )
                seconds = time.perf_counter() - started
                tokens = sum(len(c.token_ids) for g in groups for c in g)
                row = {
                    "batch": batch,
                    "temperature": temperature,
                    "fast_attention": fast,
                    "tokens": tokens,
                    "seconds": seconds,
                    "tok_per_s": tokens / seconds,
                }
                rows.append(row)
                print(f"[measured] {json.dumps(row)}", flush=True)
    print(f"{'B':>4s} {'temp':>5s} {'fast tok/s':>11s} {'sdpa tok/s':>11s} {'speed-up':>9s}")
    for batch in args.batch_sizes:
        for temperature in args.temperatures:
            fast, sdpa = (
                next(
                    r
                    for r in rows
                    if r["batch"] == batch and r["temperature"] == temperature and r["fast_attention"] is f
                )
                for f in (True, False)
            )
            print(
                f"{batch:4d} {temperature:5.1f} {fast['tok_per_s']:11.1f} {sdpa['tok_per_s']:11.1f}"
                f" {fast['tok_per_s'] / sdpa['tok_per_s']:8.2f}x"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"args": asdict(args), "hardware": hardware_info(model_dtype=model.dtype), "rows": rows}, indent=2
        )
    )
    return rows


if __name__ == "__main__":
    main()
