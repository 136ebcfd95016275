"""Train (or just evaluate) an RL / SFT agent on an ``openr/*`` environment, with held-out evaluation and curves.

The agent is a subcommand (``grpo``, the default, ``ppo``, ``sft``, ``oreo``, ``oreal``) and every field of its config dataclass is a flag
(``--group-size 8``, ``--learning-rate 2e-5``, ``--seed 1``, ``--log-dir runs/x``); ``--help`` after the subcommand
lists them with their defaults. Flags of the script and of the agent may come in any order.

Examples::

    # supervised warm-start on Arithmetic worked solutions (level 1)
    python -m experiments.train sft --env openr/Arithmetic-v0 --env-kwargs '{"level": 1}' \\
        --steps 30 --log-dir runs/sft --save runs/sft/agent
    # GRPO from the warm-start, evaluated every 5 updates on 64 held-out problems
    python -m experiments.train grpo --env openr/Arithmetic-v0 --env-kwargs '{"levels": [1, 2]}' \\
        --init runs/sft/agent --steps 20 --eval-every 5 --group-size 8 --log-dir runs/grpo --save runs/grpo/agent
    # GRPO with process rewards: each step's reward adds its score from a PRM (experiments/train_prm.py)
    python -m experiments.train grpo --process-rewards --prm runs/prm/model --init runs/sft/agent --steps 10
    # OREO from the warm-start on recorded trajectories (or iterative: --collect-problems 8)
    python -m experiments.train oreo --init runs/sft/agent --data-files runs/traj.jsonl --steps 20 --log-dir runs/oreo
    # a checkpoint every 5 updates; after a kill, the same command with --resume continues exactly
    python -m experiments.train grpo --init runs/sft/agent --steps 200 --log-dir runs/grpo --checkpoint-every 5 --resume
    # pass@1 / pass@8 per level of a saved policy
    python -m experiments.train --eval-only --init runs/sft/agent --levels 1 2 3 --eval-problems 50 --pass-k 8

Logs: stdout, ``progress.csv`` and TensorBoard events in ``--log-dir``; ``curves.png`` and ``results.json`` too.
To add an agent: one line in ``AGENTS`` and one subcommand in ``AgentConfigChoice``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from agents.rl.grpo import GRPOConfig
from agents.rl.oreal import OREALConfig
from agents.rl.oreo import OREOConfig
from agents.rl.ppo import PPOConfig
from agents.rl.sft import SFTConfig

HELD_OUT_SEED_BASE = 1_000_000_000
"""Evaluation problems come from reset seeds >= this; training draws fresh seeds from the agent's own RNG, which
practically never hits this small range (and the Arithmetic generator's problem id is drawn from the seed)."""

AGENTS: dict[type, str] = {
    GRPOConfig: "agents.rl.grpo:GRPO",
    PPOConfig: "agents.rl.ppo:PPO",
    SFTConfig: "agents.rl.sft:SFT",
    OREOConfig: "agents.rl.oreo:OREO",
    OREALConfig: "agents.rl.oreal:OREAL",
}
"""Agent class (``module:name``) for each config class the command line can build."""

AgentConfigChoice = (
    Annotated[GRPOConfig, tyro.conf.subcommand("grpo", default=GRPOConfig())]
    | Annotated[PPOConfig, tyro.conf.subcommand("ppo", default=PPOConfig())]
    | Annotated[SFTConfig, tyro.conf.subcommand("sft", default=SFTConfig())]
    | Annotated[OREOConfig, tyro.conf.subcommand("oreo", default=OREOConfig())]
    | Annotated[OREALConfig, tyro.conf.subcommand("oreal", default=OREALConfig())]
)


@dataclass
class TrainScriptConfig:
    """Train (or evaluate) an RL / SFT agent on an openr/* environment; the agent's own config is its subcommand."""

    agent: AgentConfigChoice = field(default_factory=GRPOConfig)
    """The agent (subcommand) and its config: every field of ``GRPOConfig`` / ``PPOConfig`` / ``SFTConfig``,
    including ``--seed`` and ``--log-dir`` (CSV, TensorBoard, curves.png and results.json go there)."""
    env: str = "openr/Arithmetic-v0"
    """Environment id."""
    env_kwargs: str = "{}"
    """JSON kwargs for ``gym.make``, e.g. '{"level": 1}'."""
    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder (ignored with ``--init``)."""
    init: str | None = None
    """Start from a saved agent folder (its ``policy/``) or an HF folder."""
    steps: int = 10
    """Policy updates (SFT: optimizer steps)."""
    save: str | None = None
    """Folder for the trained agent."""
    eval_problems: int = 64
    """Held-out problems per evaluation (0: no evaluation)."""
    eval_every: int = 0
    """Evaluate every N updates (0: at the start and the end only)."""
    skip_initial_eval: bool = False
    """No held-out evaluation before training."""
    eval_only: bool = False
    """Only evaluate ``--init`` / ``--model`` per level (greedy accuracy and pass@k)."""
    levels: tuple[int, ...] = (1, 2, 3)
    """Levels evaluated by ``--eval-only``."""
    pass_k: int = 8
    """k of pass@k in ``--eval-only`` (1: greedy only)."""
    eval_temperature: float = 1.0
    """Sampling temperature for pass@k."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: ``hf`` (transformers; it samples from the trained model object itself) or ``vllm`` (vLLM /
    vLLM-CPU in this process, from its own copy of the weights: the trainer pushes the new weights after every
    update; needs the ``vllm`` or ``vllm-cpu`` extra). With ``--ray``: the engine of each actor."""
    vllm_eager: bool = False
    """With ``--engine vllm``: no graph compilation (start-up ~17 s instead of ~60 s on CPU; slower decoding)."""
    threads: int | None = None
    """Torch CPU threads (default: all CPUs this process may use; with ``--ray``: per engine actor, default 1)."""
    ray: str | None = None
    """Generate on engine actors on a Ray cluster (``agents.engines.RayEngine``, docs/distributed.md): its
    address (``host:6379``, ``auto``) or ``local`` (a private instance on this machine); default: in-process."""
    actors: int = 2
    """Engine actors with ``--ray``; the trainer sends them the new weights after each update."""
    max_minutes: float | None = None
    """Stop training after this wall time."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint (weights, optimizer, RNG streams, counters) every N updates (0: never)."""
    checkpoint_dir: str | None = None
    """Where checkpoints go (``checkpoint_<updates>`` folders); default ``<log-dir>/checkpoints``."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones are deleted once a newer one is complete)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in the checkpoint dir (a fresh start when there is none), exactly
    as ``agent.load_checkpoint``: ``--steps`` counts updates in total, the log dir's ``progress.csv`` is continued."""
    prm: str | None = None
    """A saved PRM folder (``experiments/train_prm.py``, loaded by ``rewards.prm.load_prm``): the training env is
    wrapped with ``wrappers.PRMReward``, so every step's reward adds the PRM's score of that step (GRPO trains on
    them with ``--process-rewards``; PPO puts each on its step's last token). Held-out evaluation runs on the
    plain env (accuracy is the env's ``is_success``)."""
    prm_per_step: Literal["score", "delta"] = "score"
    """``PRMReward.per_step``: the step's PRM score, or its change since the previous step (potential-based)."""
    prm_weight: float = 1.0
    """``PRMReward.prm_weight``: scale of the PRM term in each step's reward."""
    prm_outcome_weight: float = 1.0
    """``PRMReward.outcome_weight``: scale of the env's own (outcome) reward; 0 trains on PRM scores only."""


def parse_args(argv: list[str] | None = None) -> TrainScriptConfig:
    """The script's config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(
        TrainScriptConfig,
        args=argv,
        description=__doc__,
        config=(tyro.conf.OmitSubcommandPrefixes, tyro.conf.CascadeSubcommandArgs),
    )


def _import(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load_policy(model_name: str, init: str | None) -> tuple[Any, Any]:
    """fp32 master weights (training autocasts to bf16 where the device runs it fast); ``init`` is a saved agent
    folder or HF folder. The device is CUDA when available (``load_model``)."""
    import torch

    from agents.engines import load_model

    path = model_name
    if init:
        folder = Path(init)
        path = str(folder / "policy") if (folder / "policy").is_dir() else str(folder)
    return load_model(path, dtype=torch.float32)


def prm_reward_env(args: TrainScriptConfig, env_kwargs: dict[str, Any]) -> Any:
    """``args.env`` wrapped with ``wrappers.PRMReward`` around the PRM in ``args.prm``; the agent's vector envs
    are rebuilt from its spec, wrapper included, and share the one PRM."""
    import gymnasium as gym

    from rewards.prm import load_prm
    from wrappers import PRMReward

    if not args.prm or not Path(args.prm).is_dir():
        raise SystemExit(f"--prm {args.prm!r} is not a saved PRM folder")
    return PRMReward(
        gym.make(args.env, **env_kwargs),
        load_prm(args.prm),
        per_step=args.prm_per_step,
        prm_weight=args.prm_weight,
        outcome_weight=args.prm_outcome_weight,
    )


def build_engine(
    kind: str,
    model: Any,
    tokenizer: Any,
    *,
    threads: int | None = None,
    seed: int = 0,
    ray: str | None = None,
    actors: int = 2,
    vllm_eager: bool = False,
    **engine_kwargs: Any,
) -> Any:
    """The rollout engine of a trainer of ``model`` (``"hf"`` or ``"vllm"``; ``ray``: on engine actors;
    ``engine_kwargs`` go to the engine, e.g. ``dtype``).

    The transformers engine samples from ``model`` itself; the others hold a copy that
    ``TrainableAgent.sync_engine`` refreshes after each update (``engine.update_weights``). The vLLM engine runs
    in this process (``in_process=True``): it uses this process's torch threads (set ``threads`` before it
    starts: vLLM-CPU then freezes the count) and gets the weights as tensors, not through a file."""
    if ray:
        from agents.engines import RayEngine

        if kind == "vllm" and vllm_eager:
            engine_kwargs["enforce_eager"] = True

        return RayEngine(
            model,
            tokenizer,
            num_actors=actors,
            threads_per_actor=threads or 1,
            address=ray,
            backend=kind,
            engine_kwargs=engine_kwargs,
        )
    if kind == "vllm":
        from agents.engines import VLLMEngine

        return VLLMEngine(
            model, tokenizer, seed=seed, in_process=True, enforce_eager=vllm_eager, **engine_kwargs
        )
    if kind != "hf":
        raise ValueError(f"engine must be 'hf' or 'vllm', got {kind!r}")
    from agents.engines import HFEngine

    return HFEngine(model, tokenizer, num_threads=threads, **engine_kwargs)


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


def checkpoint_folder(args: TrainScriptConfig, log_dir: Path | None) -> Path | None:
    """``--checkpoint-dir``, else ``<log-dir>/checkpoints`` (None when neither is given)."""
    if args.checkpoint_dir:
        return Path(args.checkpoint_dir)
    return log_dir / "checkpoints" if log_dir else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    import torch

    import reasoning_gym  # noqa: F401
    from agents.engines.hardware import autocast_dtype, device_of, hardware_info
    from agents.rl.callbacks import CheckpointCallback, EvalCallback
    from agents.rl.checkpoint import latest_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    env_kwargs = json.loads(args.env_kwargs)
    config = args.agent
    log_dir = Path(config.log_dir) if config.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_policy(args.model, args.init)
    engine = build_engine(
        args.engine,
        model,
        tokenizer,
        threads=args.threads,
        seed=config.seed,
        ray=args.ray,
        actors=args.actors,
        vllm_eager=args.vllm_eager,
    )
    agent_class = _import(AGENTS[type(config)])
    train_env = prm_reward_env(args, env_kwargs) if args.prm else args.env
    agent = agent_class(engine, train_env, config, env_kwargs=env_kwargs, model=model)
    agent_name = agent_class.__name__.lower()
    checkpoint_dir = checkpoint_folder(args, log_dir)
    if (args.resume or args.checkpoint_every) and checkpoint_dir is None:
        raise SystemExit("--resume and --checkpoint-every need --checkpoint-dir or --log-dir")
    resumed_from = latest_checkpoint(checkpoint_dir) if args.resume and checkpoint_dir else None
    if resumed_from is not None:
        agent.load_checkpoint(resumed_from)
        print(f"resumed from {resumed_from} ({agent.num_updates} updates done)", flush=True)
    started = time.time()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "agent": agent_name,
        "config": dataclasses.asdict(args),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "hardware": hardware_info(
            model_dtype=next(model.parameters()).dtype,
            autocast=autocast_dtype(config.autocast, device_of(model)),
            device=str(device_of(model)),
        ),
    }

    if args.eval_only:
        results["levels"] = evaluate_levels(
            agent, args.env, list(args.levels), args.eval_problems, args.pass_k, args.eval_temperature
        )
    else:
        seeds = held_out_seeds(args.eval_problems)
        evaluator = (
            EvalCallback(
                seeds,
                eval_freq=args.eval_every or 10**9,
                evaluate_at_start=not args.skip_initial_eval,
                env=args.env,  # the plain env: no PRM scoring in held-out evaluation
            )
            if args.eval_problems
            else None
        )
        callbacks: list[Any] = [evaluator] if evaluator else []
        if args.max_minutes:
            deadline = started + 60 * args.max_minutes
            callbacks.append(lambda locals_, globals_: time.time() < deadline)
        if args.checkpoint_every and checkpoint_dir:  # last, so a checkpoint holds what the others did
            callbacks.append(
                CheckpointCallback(args.checkpoint_every, checkpoint_dir, keep_last=args.keep_checkpoints)
            )
        agent.learn(max(0, args.steps - agent.num_updates), callback=callbacks or None)
        if evaluator:
            if not evaluator.history or evaluator.history[-1][0] != agent.num_updates:
                evaluator._evaluate()
                agent.logger.dump(step=agent.num_updates)
            results["eval"] = [{"updates": step, **metrics} for step, metrics in evaluator.history]
            print(f"held-out accuracy: {[round(m['accuracy'], 3) for _, m in evaluator.history]}", flush=True)
        if args.save:
            agent.save(args.save)
        if log_dir:
            png = plot_progress(
                log_dir / "progress.csv", log_dir / "curves.png", f"{agent_name} on {args.env}"
            )
            results["curves"] = str(png) if png else None
    results["wall_seconds"] = time.time() - started
    if log_dir:
        (log_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
