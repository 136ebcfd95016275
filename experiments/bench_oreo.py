"""Time and peak memory of one OREO update against one SFT update on the same batch of trajectories.

    python -m experiments.bench_oreo --trajectories 16 --updates 4 --out runs/bench_oreo.json

(``python -m experiments.bench_rl --impl oreo`` runs the same.) Same work on every side: SmolLM2-135M-Instruct
(fp32 master weights, autocast as ``"auto"`` decides for this CPU), the same ``--trajectories`` worked solutions of
Arithmetic level-2 problems (half labelled R = 1, half R = 0: OREO's update does the same work whatever the
labels), one optimizer step per update over micro-batches of ``--micro-batch-size``. SFT: one policy forward and
backward. OREO: the policy forward and backward, the reference forward (every update: ``cache_reference=False``,
the worst case; by default OREO keeps a trajectory's reference log-probs after their first use) and the value
model's forward and backward: ``oreo`` on a separate LM copy (the paper), ``oreo_shared`` a head on the policy's
backbone. Each runs in its own subprocess (its own peak RSS). Reported: median seconds per update over updates
2..N, the ratio to SFT (target <= 2.5 for ``oreo``), peak RSS, the machine's load average while each ran (other
jobs on a shared machine skew the ratio), CPU capability and dtypes.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODES = ("sft", "oreo", "oreo_shared")


@dataclass
class BenchOREOConfig:
    """One OREO update vs one SFT update on the same batch."""

    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder."""
    trajectories: int = 16
    """Trajectories per update (the batch)."""
    updates: int = 4
    """Updates timed per mode (the first is a warm-up and is not in the median)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass."""
    threads: int = 1
    """Torch threads (1 avoids OpenMP spin-wait collapse on a shared machine)."""
    seed: int = 0
    """Seed of the problems and the models' RNG."""
    modes: tuple[str, ...] = MODES
    """Which of sft / oreo / oreo_shared to run."""
    out: str | None = None
    """Write the JSON report here."""
    child_mode: str | None = None
    """Internal: run one mode in this process and write its result to ``child_out``."""
    child_out: str | None = None
    """Internal: where a child writes its result."""


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _batch(config: BenchOREOConfig) -> list[Any]:
    """``trajectories`` worked solutions (steps) of level-2 Arithmetic problems, alternately R = 1 and R = 0."""
    import gymnasium as gym

    import reasoning_gym  # noqa: F401
    from agents.rl.oreo_data import OREOTrajectory

    env = gym.make("openr/Arithmetic-v0", level=2)
    batch = []
    for index in range(config.trajectories):
        env.reset(seed=config.seed * 100_003 + index)
        problem = env.unwrapped.problem
        batch.append(
            OREOTrajectory(
                reward=float(index % 2 == 0),
                question=problem.question,
                instruction=env.unwrapped.instruction,
                steps=problem.solution.split("\n\n"),
            )
        )
    env.close()
    return batch


def run_mode(config: BenchOREOConfig, mode: str) -> dict[str, Any]:
    import torch

    from agents.engines import HFEngine, load_model
    from agents.engines.hardware import autocast_dtype, device_of, hardware_info
    from agents.rl.oreo import OREO, OREOConfig
    from agents.rl.sft import SFT, SFTConfig, SFTExample

    torch.set_num_threads(config.threads)
    model, tokenizer = load_model(config.model, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, num_threads=config.threads)
    batch = _batch(config)
    shared = dict(seed=config.seed, micro_batch_size=config.micro_batch_size, autocast="auto", verbose=0)
    loaded_rss = _peak_rss_gb()
    seconds: list[float] = []
    load = [os.getloadavg()[0]]
    if mode == "sft":
        agent: Any = SFT(engine, None, SFTConfig(**shared))
        examples = [SFTExample(t.question, t.steps, t.instruction) for t in batch]
        for _ in range(config.updates):
            started = time.perf_counter()
            agent.loss_on(examples)
            seconds.append(time.perf_counter() - started)
            load.append(os.getloadavg()[0])
    else:
        value_model = "shared" if mode == "oreo_shared" else "separate"
        agent = OREO(engine, None, OREOConfig(value_model=value_model, cache_reference=False, **shared))
        agent.add_data(batch)
        indices = list(range(len(batch)))
        for _ in range(config.updates):
            started = time.perf_counter()
            agent.train_on(indices)
            seconds.append(time.perf_counter() - started)
            load.append(os.getloadavg()[0])
    tokens = sum(len(row.response) for i in range(len(batch)) for row in _tokens(agent, batch, i))
    return {
        "update_seconds": seconds,
        "load_average": load,
        "response_tokens": tokens,
        "rss_after_load_gb": loaded_rss,
        "peak_rss_gb": _peak_rss_gb(),
        "hardware": hardware_info(
            model_dtype=next(model.parameters()).dtype,
            autocast=autocast_dtype(agent.config.autocast, device_of(model)),
        ),
    }


def _tokens(agent: Any, batch: list[Any], index: int) -> list[Any]:
    from agents.rl.oreo_data import tokenize_trajectory

    return tokenize_trajectory(batch[index], agent.tokenizer, agent.engine).rows


def _child(config: BenchOREOConfig, mode: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable,
            "-m",
            "experiments.bench_oreo",
            "--child-mode",
            mode,
            "--child-out",
            out.name,
        ]
        for name in ("model", "trajectories", "updates", "micro_batch_size", "threads", "seed"):
            command += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
        process = subprocess.run(command, text=True, capture_output=True)
        if process.returncode != 0:
            return {"error": (process.stderr or process.stdout)[-3000:]}
        return json.loads(Path(out.name).read_text())


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode, result in results.items():
        if "error" in result:
            summary[mode] = {"error": result["error"].strip().splitlines()[-1]}
            continue
        timed = result["update_seconds"][1:] or result["update_seconds"]
        summary[mode] = {
            "median_update_seconds": statistics.median(timed),
            "peak_rss_gb": result["peak_rss_gb"],
            "max_load_average": max(result["load_average"], default=float("nan")),
        }
    sft = summary.get("sft", {}).get("median_update_seconds")
    for mode in ("oreo", "oreo_shared"):
        if sft and "median_update_seconds" in summary.get(mode, {}):
            summary[mode]["ratio_over_sft"] = summary[mode]["median_update_seconds"] / sft
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tyro

    config = tyro.cli(BenchOREOConfig, args=argv, description=__doc__.split("\n\n")[0])
    if config.child_mode:
        result = run_mode(config, config.child_mode)
        Path(str(config.child_out)).write_text(json.dumps(result))
        return result
    results = {}
    for mode in config.modes:
        print(f"running {mode} ...", flush=True)
        results[mode] = _child(config, mode)
    summary = summarise(results)
    report = {"settings": asdict(config), "summary": summary, "raw": results}
    if config.out:  # written before the table is printed: the measurements are never lost to a display error
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(json.dumps(report, indent=2))
    print(f"{'mode':<12} {'s/update':>9} {'x SFT':>6} {'peak RSS GB':>12} {'max load':>9}")
    for mode, row in summary.items():
        if "error" in row:
            print(f"{mode:<12} error: {row['error']}")
            continue
        ratio = row.get("ratio_over_sft")
        print(
            f"{mode:<12} {row['median_update_seconds']:>9.2f} {ratio if ratio else 1.0:>6.2f} "
            f"{row['peak_rss_gb']:>12.2f} {row['max_load_average']:>9.1f}"
        )
    hardware = next((r["hardware"] for r in results.values() if "hardware" in r), {})
    print(
        f"cpu {hardware.get('cpu_capability')}, autocast {hardware.get('autocast')}, threads {config.threads}"
    )
    return report


if __name__ == "__main__":
    main()
