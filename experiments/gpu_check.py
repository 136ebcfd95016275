"""The GPU path end to end on one CUDA GPU with SmolLM2-135M-Instruct; ``scripts/gpu_check.sh`` installs and runs it.

No GPU was at hand where this was written, so every step checks its own result and the script prints one table of
what passed (and exits non-zero if anything failed):

1. engines: ``experiments.bench_engines`` with the transformers and vLLM backends on CUDA, tokens/s at B = 1, 8, 64
   (greedy and sampling) and the vLLM / transformers ratio;
2. RL: ``--grpo-updates`` GRPO updates whose rollouts come from a vLLM engine (fp32, so greedy decoding is
   comparable) while a transformers copy trains on CUDA, weights pushed to vLLM after every update; then vLLM's
   greedy output must equal the trained model's on held-out prompts;
3. search: PRM-guided beam search with the transformers engine and a step-tag PRM, both on CUDA (the PRM is the
   policy read at Math-Shepherd step tags, or ``--prm PATH``: this checks the CUDA path, not PRM quality);
4. the tests marked ``gpu`` (``pytest -m gpu``).

    python -m experiments.gpu_check                 # after scripts/gpu_check.sh's install
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tyro

ENV_ID = "openr/Arithmetic-v0"


@dataclass
class GPUCheckConfig:
    """Check the GPU path end to end (engines, GRPO with vLLM weight sync, PRM beam search, gpu tests)."""

    model: str = "smollm2-135m-instruct"
    """Policy for every step (name, HF id or folder)."""
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    """Batch sizes of the engine throughput rows."""
    max_new_tokens: int = 128
    """New tokens per sequence in the throughput rows."""
    grpo_updates: int = 5
    """GRPO updates with vLLM rollouts."""
    vllm_memory: float = 0.3
    """GPU memory fraction of the vLLM engine that shares the GPU with the trainer."""
    prm: str | None = None
    """A trained PRM folder (``rewards.prm.load_prm``) for the beam search; default: the policy as a step-tag PRM."""
    search_problems: int = 8
    """Problems searched with the PRM."""
    tests: bool = True
    """Run the tests marked gpu (--no-tests skips them)."""
    out: str = "runs/gpu_check"
    """Output folder (results.json, engines.json)."""


def check_engines(config: GPUCheckConfig, out: Path) -> dict[str, Any]:
    """tokens/s of both engines on CUDA at each batch size, and vLLM / transformers (bench_engines, subprocesses)."""
    report = out / "engines.json"
    command = [
        sys.executable,
        "-m",
        "experiments.bench_engines",
        "--backends",
        "hf",
        "vllm",
        "--model",
        config.model,
    ]
    command += [
        "--batch-sizes",
        *map(str, config.batch_sizes),
        "--max-new-tokens",
        str(config.max_new_tokens),
    ]
    command += ["--out", str(report)]
    subprocess.run(command, check=False)
    if not report.is_file():
        return {"ok": False, "error": "bench_engines wrote no report"}
    results = json.loads(report.read_text())
    backends = results.get("backends", {})
    rows = {
        name: {f"B={r['batch']} {r['mode']}": r["tok_s"] for r in backend["throughput"]}
        for name, backend in backends.items()
    }
    on_cuda = all(backend.get("hardware", {}).get("cuda") for backend in backends.values())
    return {
        "ok": set(backends) == {"hf", "vllm"} and on_cuda and not results.get("failed"),
        "tok_s": rows,
        "vllm_over_hf": results.get("vllm_over_hf", {}),
        "failed": results.get("failed", {}),
    }


def check_grpo_with_vllm(config: GPUCheckConfig) -> dict[str, Any]:
    """GRPO updates sampling from vLLM, training a CUDA transformers copy, then vLLM greedy == trained greedy."""
    import gymnasium as gym
    import torch

    import reasoning_gym  # noqa: F401
    from agents.engines import HFEngine, VLLMEngine, load_model
    from agents.rl.grpo import GRPO, GRPOConfig
    from wrappers import LengthPenalty

    model, tokenizer = load_model(config.model, dtype=torch.float32, device="cuda")
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    # fp32 in vLLM too, so greedy decoding of the two copies is comparable token for token.
    engine = VLLMEngine(
        config.model, dtype="float32", seed=0, gpu_memory_utilization=config.vllm_memory, max_model_len=2048
    )
    # A small length penalty makes rewards differ within a group even when no answer is right, so every update
    # has a non-zero gradient and the weights really change (the check would be empty otherwise).
    env = LengthPenalty(gym.make(ENV_ID, level=1), coef=0.001)
    grpo = GRPOConfig(
        prompts_per_update=4,
        group_size=4,
        max_new_tokens=96,
        rollout_mode="episode",
        learning_rate=1e-5,
        kl_coef=0.0,
        verbose=0,
    )
    started = time.perf_counter()
    try:
        agent = GRPO(engine, env, grpo, model=model)
        agent.learn(config.grpo_updates)
        seconds = time.perf_counter() - started
        changed = sum(not torch.equal(p, initial[name]) for name, p in model.named_parameters())
        prompts = [
            engine.step_prompt(f"What is {7 * i + 3} + {5 * i + 2}?", [], env.unwrapped.instruction)
            for i in range(8)
        ]
        served = engine.generate(prompts, max_new_tokens=32, temperature=0)
        trained = HFEngine(model, tokenizer).generate(prompts, max_new_tokens=32, temperature=0)
        same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(served, trained))
    finally:
        engine.close()
    return {
        "ok": changed > 0 and same == len(prompts),
        "updates": config.grpo_updates,
        "seconds": seconds,
        "parameters_changed": changed,
        "greedy_equal": f"{same}/{len(prompts)}",
    }


def check_prm_beam_search(config: GPUCheckConfig) -> dict[str, Any]:
    """PRM-guided beam search with the engine and the PRM on CUDA."""
    import gymnasium as gym

    import reasoning_gym  # noqa: F401
    from agents import BeamSearch
    from agents.engines import HFEngine, load_model
    from agents.engines.hardware import device_of
    from rewards.prm import MATH_SHEPHERD, StepTagPRM, load_prm

    engine = HFEngine(config.model, device="cuda")
    if config.prm:
        prm = load_prm(config.prm, device="cuda")
    else:
        prm_model, prm_tokenizer = load_model(config.model, device="cuda")
        prm = StepTagPRM(prm_model, prm_tokenizer, MATH_SHEPHERD)
    env = gym.make(ENV_ID, level=1)
    agent = BeamSearch(engine, env, prm=prm, beam_width=4, num_expansions=2, max_steps=3, max_new_tokens=48)
    started = time.perf_counter()
    results = agent.solve_many(
        env, [None] * config.search_problems, seeds=list(range(config.search_problems))
    )
    seconds = time.perf_counter() - started
    devices = {str(device_of(engine.model)), str(device_of(prm.model))}
    return {
        "ok": len(results) == config.search_problems and all(d.startswith("cuda") for d in devices),
        "problems": len(results),
        "accuracy": sum(r["correct"] for r in results) / max(len(results), 1),
        "prm_calls_per_problem": sum(r.get("prm_calls", 0) for r in results) / max(len(results), 1),
        "seconds": seconds,
        "devices": sorted(devices),
    }


def check_gpu_tests() -> dict[str, Any]:
    """``pytest -m gpu``: passes only if tests ran (none skipped for want of CUDA) and none failed."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/test_gpu.py"]
    finished = subprocess.run(command, capture_output=True, text=True)
    tail = (finished.stdout or "").strip().splitlines()[-1:] or ["(no output)"]
    return {"ok": finished.returncode == 0 and "skipped" not in tail[0], "summary": tail[0]}


def _table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GPU check")
    for column in ("check", "result", "details"):
        table.add_column(column)
    for name, result in results.items():
        details = {k: v for k, v in result.items() if k not in ("ok", "tok_s")}
        table.add_row(name, "ok" if result.get("ok") else "FAILED", json.dumps(details, default=str)[:300])
    engines = results.get("engines", {}).get("tok_s", {})
    if engines:
        for key in engines.get("hf", {}):
            hf, vllm = engines["hf"][key], engines.get("vllm", {}).get(key)
            ratio = f"{vllm / hf:.2f}x" if vllm else "-"
            table.add_row(f"tok/s {key}", "", f"hf {hf:.0f}  vllm {vllm or 0:.0f}  vllm/hf {ratio}")
    Console(width=160).print(table)


def parse_args(argv: list[str] | None = None) -> GPUCheckConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(GPUCheckConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    import torch

    from agents.engines.hardware import hardware_info

    if not torch.cuda.is_available():
        raise SystemExit("experiments.gpu_check needs a CUDA GPU (torch.cuda.is_available() is False)")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    checks = [
        ("engines", lambda: check_engines(config, out)),
        ("grpo_vllm_sync", lambda: check_grpo_with_vllm(config)),
        ("prm_beam_search", lambda: check_prm_beam_search(config)),
    ]
    if config.tests:
        checks.append(("gpu_tests", check_gpu_tests))
    started = time.perf_counter()
    for name, check in checks:
        print(f"== {name}", flush=True)
        try:
            results[name] = check()
        except Exception as error:  # one failing check must not hide the others
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        torch.cuda.empty_cache()
    report = {
        "config": asdict(config),
        "hardware": hardware_info(),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    _table(results)
    print(f"wrote {out / 'results.json'} ({report['seconds']:.0f} s)")
    if not all(result.get("ok") for result in results.values()):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
