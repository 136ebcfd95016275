"""The main job (``make demo``): OpenR's test-time scaling pipeline on the policy's own problems, at equal compute.

Four stages, each cached under ``<out>/stages/<name>-<key>/`` (key: a hash of the stage's config and its inputs'
keys, ``experiments/stages.py``), reused on the next run, rebuilt with ``--fresh``:

1. ``policy``: the SFT warm-start of docs/rl.md (``agents.SFT`` on the env's worked solutions), or ``--model`` as
   it is with ``--sft-steps 0``.
2. ``labels``: Monte-Carlo step labels on training problems from that policy (Math-Shepherd; OpenR's data
   pipeline): ``experiments/collect_prm_data.py``.
3. ``prm``: a Math-Shepherd step-tag PRM trained on them from the policy's weights (``experiments/train_prm.py``);
   its step AUC on held-out training questions is printed.
4. ``search``: on held-out problem sets (disjoint from the training problems): greedy, majority vote, PRM-weighted
   vote, PRM best-of-N, PRM beam search and PRM-guided MCTS at each budget.

The x-axis is compute per problem: tokens the policy generated + prompt tokens the engine processed (after prefix
re-use) + tokens the PRM read. Majority vote, PRM-weighted vote and PRM best-of-N choose from the same best-of-N
samples (as OpenR evaluates them); majority vote is not charged for the PRM. Prints a table and the equal-compute
comparison, writes ``results.json``, ``accuracy_vs_compute.png`` and TensorBoard scalars to ``--out``.

    python -m experiments.main_job                      # the default: Arithmetic, SmolLM2-135M-Instruct, offline
    python -m experiments.main_job --fresh              # rebuild every stage
    python -m experiments.main_job --env openr/GSM8K-v0 --data path/to/gsm8k.jsonl --model my/policy --sft-steps 0
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from experiments.stages import StageCache, StageResult, path_fingerprint

__all__ = [
    "METHODS",
    "MainJobConfig",
    "compute_of",
    "equal_compute_gaps",
    "main",
    "method_rows",
    "run_pipeline",
]

ARITHMETIC = "openr/Arithmetic-v0"

# method -> (search run it reads, selection rule applied to that run's candidates or None for the run's own
# choice, whether the PRM's read tokens count). ``{agg}`` is the PRM aggregation (``--prm-aggregation``).
METHODS: dict[str, tuple[str, str | None, bool]] = {
    "greedy": ("greedy", None, False),
    "majority_vote": ("best_of_n", "majority_vote", False),
    "prm_vote": ("best_of_n", "prm_{agg}_vote", True),
    "prm_best_of_n": ("best_of_n", "prm_{agg}_max", True),
    "prm_beam_search": ("beam_search", None, True),
    "mcts": ("mcts", None, True),
    "oreo_beam_search": ("oreo_beam_search", None, True),
}


@dataclass
class MainJobConfig:
    """Everything the main job's four stages and its report depend on."""

    env: str = ARITHMETIC
    """Registered env id (its problems, instruction and step delimiter)."""
    levels: tuple[int, ...] = (2,)
    """Arithmetic levels of the training (labels) and held-out (search) problems; ignored by other envs."""
    sft_levels: tuple[int, ...] = (1,)
    """Arithmetic levels of the worked solutions the warm-start is trained on (docs/rl.md: level 1)."""
    env_kwargs: str = "{}"
    """Extra JSON keyword arguments for ``gym.make`` (every stage)."""
    data: str = ""
    """Data file for MATH / GSM8K (the env's ``data_path``)."""
    model: str = "smollm2-135m-instruct"
    """Base model (name, HF id or local folder); the warm-start starts from it."""
    sft_steps: int = 6
    """SFT optimizer steps on the env's worked solutions (stage 1); 0 searches with ``model`` as it is."""
    sft_batch_size: int = 16
    """Worked solutions per SFT step."""
    sft_learning_rate: float = 1e-4
    """SFT learning rate (AdamW)."""
    label_problems: int = 64
    """Training problems for the Monte-Carlo labels (stage 2)."""
    label_samples: int = 8
    """Solutions sampled per training problem (many per problem, so that a problem's solutions can disagree)."""
    label_rollouts: int = 2
    """Completions sampled from every step prefix; a step's label is the fraction of them (and of the sampled
    solutions through that prefix) that reach the right answer (Math-Shepherd's soft estimate; hard: > 0)."""
    label_rollout_scope: Literal["all", "mixed"] = "mixed"
    """Roll out the step prefixes of ``all`` problems or only of ``mixed`` ones (sampled solutions disagree): the
    rollouts go where the labels can tell one problem's solutions apart."""
    prm_epochs: int = 2
    """PRM training epochs (stage 3)."""
    prm_labels: Literal["soft", "hard"] = "soft"
    """Train the PRM on the Monte-Carlo fraction (``soft``) or on "any completion right" (``hard``, Math-Shepherd)."""
    prm_train_questions: Literal["all", "mixed"] = "mixed"
    """Train the PRM on ``all`` labelled questions or only on ``mixed`` ones (solutions disagree)."""
    prm_pairwise_weight: float = 1.0
    """Weight of the PRM's within-question pairwise (Bradley-Terry) term on right vs wrong solutions (0: off).
    These three defaults won on the validation split of the training questions (docs/search.md)."""
    prm_learning_rate: float = 1e-4
    """PRM learning rate."""
    prm_trainable_layers: int = 4
    """Decoder layers of the PRM that train (the last ones; 0: all): the rest stay the policy's."""
    prm_batch_size: int = 16
    """Labelled solutions per PRM optimizer step."""
    prm_eval_fraction: float = 0.2
    """Training questions held out of PRM training to measure its step AUC (never the search problems)."""
    oreo_steps: int = 0
    """OREO updates (``agents.OREO``, soft-Bellman policy + value learning) on the labels stage's sampled solutions
    and their outcomes; > 0 adds OREO's value-guided beam search to the methods (0: no OREO stage)."""
    oreo_batch_size: int = 16
    """Trajectories per OREO update."""
    prm_aggregation: Literal["min", "last"] = "min"
    """How a candidate's step scores combine for PRM vote / best-of-N / beam and MCTS answers: ``min``
    (Math-Shepherd) or ``last``."""
    budgets: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Search budgets: N for best-of-N, the beam width (2 expansions per beam), MCTS simulations (2 expansions)."""
    problem_sets: int = 3
    """Disjoint held-out problem sets; the spread over them is shown."""
    problems_per_set: int = 12
    """Problems per held-out set (searched together: one engine call per wave for the whole set)."""
    test_seed: int = 50_000_000
    """Held-out set ``i`` comes from reset seeds ``test_seed + 100_000 * i`` (training problems from 0)."""
    temperature: float = 1.2
    """Sampling temperature for labels and search (the warm-start is nearly deterministic at 1.0)."""
    max_steps: int = 4
    """Reasoning steps per episode."""
    max_new_tokens: int = 32
    """Tokens per step."""
    dtype: str = "auto"
    """Dtype for generation and PRM scoring (``auto``: bf16 where the CPU runs it fast); training is fp32 +
    bf16 autocast."""
    threads: int | None = None
    """Torch threads; default: all cores on a quiet machine, 1 on a busy one."""
    seed: int = 0
    """Seed of every stage."""
    out: str = "runs/main_job"
    """Output folder: ``stages/`` (the cache), ``results.json``, ``accuracy_vs_compute.png``, ``tensorboard/``."""
    fresh: bool = False
    """Rebuild every stage instead of reusing the cache."""
    progress: bool = True
    """Show a progress bar per stage."""


# --- configuration helpers -------------------------------------------------------------------------------------


def env_kwargs(config: MainJobConfig, levels: Sequence[int]) -> dict[str, Any]:
    kwargs: dict[str, Any] = json.loads(config.env_kwargs)
    if config.env == ARITHMETIC:
        kwargs.setdefault("levels", list(levels))
    if config.data:
        kwargs["data_path"] = config.data
    return kwargs


def _model_dtype(config: MainJobConfig) -> Any:
    from agents.engines.models import resolve_dtype

    return resolve_dtype(config.dtype)


def _bar(config: MainJobConfig, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not config.progress, unit="it", leave=True)


# --- stage 1: the policy ---------------------------------------------------------------------------------------


def build_policy(config: MainJobConfig, folder: Path) -> dict[str, Any]:
    """SFT warm-start on the env's worked solutions (docs/rl.md), saved as ``policy/``."""
    import torch

    from agents.engines import HFEngine, load_model
    from agents.rl.sft import SFT, SFTConfig

    model, tokenizer = load_model(config.model, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, num_threads=config.threads)
    sft_config = SFTConfig(
        seed=config.seed,
        learning_rate=config.sft_learning_rate,
        batch_size=config.sft_batch_size,
        log_dir=str(folder / "log"),
        log_formats=("csv", "tensorboard"),
        verbose=0,
    )
    agent = SFT(engine, config.env, sft_config, env_kwargs=env_kwargs(config, config.sft_levels))
    losses: list[float] = []
    bar = _bar(config, config.sft_steps, "stage 1/4 SFT warm-start")

    def on_step(locals_: dict, globals_: dict) -> bool:
        loss = agent.logger.name_to_value.get("train/loss")
        if loss is not None:
            losses.append(float(loss))
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)
        return True

    agent.learn(config.sft_steps, callback=on_step)
    bar.close()
    agent.save(folder)
    return {"policy": "policy", "losses": losses}


def policy_path(config: MainJobConfig, stage: StageResult | None) -> str:
    return config.model if stage is None else str(stage.folder / stage.summary["policy"])


# --- stage 2: Monte-Carlo step labels --------------------------------------------------------------------------


def collect_config(config: MainJobConfig, policy: str, out: str) -> Any:
    from experiments.collect_prm_data import PRMDataConfig

    return PRMDataConfig(
        env_id=config.env,
        levels=list(config.levels),
        data=config.data,
        model=policy,
        dtype=config.dtype,
        num_problems=config.label_problems,
        problem_seed=0,
        samples=config.label_samples,
        rollouts=config.label_rollouts,
        rollout_scope=config.label_rollout_scope,
        sibling_outcomes=True,
        max_steps=config.max_steps,
        max_new_tokens=config.max_steps * config.max_new_tokens,
        rollout_max_new_tokens=config.max_steps * config.max_new_tokens,
        temperature=config.temperature,
        problems_per_batch=16,
        seed=config.seed,
        out=out,
    )


def build_labels(config: MainJobConfig, folder: Path, engine: Any, policy: str) -> dict[str, Any]:
    """``collect_prm_data.collect`` on the training problems; also lists their ids (the search excludes them)."""
    from experiments.collect_prm_data import collect

    print("stage 2/4 Monte-Carlo step labels (collect_prm_data)", flush=True)
    summary = collect(collect_config(config, policy, str(folder)), engine, config.progress)
    samples = (folder / "samples.jsonl").read_text().splitlines()
    ids = sorted({json.loads(line)["problem_id"] for line in samples if line.strip()})
    (folder / "problem_ids.json").write_text(json.dumps(ids))
    return {k: v for k, v in summary.items() if k not in ("config", "few_shot_messages")}


# --- stage 3: the PRM ------------------------------------------------------------------------------------------


def prm_train_config(config: MainJobConfig, policy: str, labels: str, folder: Path) -> Any:
    from experiments.train_prm import PRMTrainConfig

    return PRMTrainConfig(
        data=[labels],
        eval_fraction=config.prm_eval_fraction,
        model=policy,
        format="math-shepherd",
        labels=config.prm_labels,
        train_questions=config.prm_train_questions,
        pairwise_weight=config.prm_pairwise_weight,
        epochs=config.prm_epochs,
        lr=config.prm_learning_rate,
        batch_size=config.prm_batch_size,
        max_length=256,
        trainable_layers=config.prm_trainable_layers,
        eval_at="epochs",
        logdir=str(folder / "tensorboard"),
        out=str(folder / "model"),
        seed=config.seed,
    )


def build_prm(config: MainJobConfig, folder: Path, policy: str, labels: str) -> dict[str, Any]:
    from experiments.train_prm import train

    print("stage 3/4 PRM training (train_prm)", flush=True)
    result = train(prm_train_config(config, policy, labels, folder), progress=config.progress)
    return {
        "model": "model",
        "auc_before": result["eval_before"].get("auc"),
        "auc": result["eval_after"].get("auc"),
        "eval_steps": result["eval_after"].get("steps"),
        "pair_accuracy_before": result["eval_before"].get("pair_accuracy"),
        "pair_accuracy": result["eval_after"].get("pair_accuracy"),
        "eval_pairs": result["eval_after"].get("pairs"),
        "train_examples": result["train_examples"],
        "optimizer_steps": result["optimizer_steps"],
    }


# --- optional: OREO -------------------------------------------------------------------------------------------


def build_oreo(
    config: MainJobConfig, folder: Path, policy: str, labels: Path, instruction: str
) -> dict[str, Any]:
    """OREO (``agents.OREO``, separate value model) trained offline on the labels stage's sampled solutions with their
    outcomes as rewards; its value model is saved in ``agent/value``."""
    import torch

    from agents import OREO
    from agents.engines import HFEngine, load_model
    from agents.rl.oreo import OREOConfig
    from agents.rl.oreo_data import OREOTrajectory

    print("stage 3b OREO (value-guided beam search)", flush=True)
    samples = [json.loads(line) for line in (labels / "samples.jsonl").read_text().splitlines()]
    trajectories = [
        OREOTrajectory(
            float(s["correct"]), s["question"], instruction, s["steps"], problem_id=s["problem_id"]
        )
        for s in samples
    ]
    model, tokenizer = load_model(policy, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, num_threads=config.threads)
    oreo_config = OREOConfig(
        seed=config.seed,
        batch_size=config.oreo_batch_size,
        log_dir=str(folder / "log"),
        log_formats=("csv", "tensorboard"),
        verbose=0,
    )
    agent = OREO(engine, config.env, oreo_config, env_kwargs=env_kwargs(config, config.levels))
    bar = _bar(config, config.oreo_steps, "stage 3b OREO")
    agent.learn(
        config.oreo_steps, callback=lambda locals_, globals_: bar.update(1) or True, data=trajectories
    )
    bar.close()
    agent.save(folder / "agent")
    return {"agent": "agent", "trajectories": len(trajectories)}


def load_oreo_value(stage: StageResult, engine: Any, env: Any, dtype: Any) -> Any:
    """The OREO value model as a search scorer on the search engine (the value reads the policy's prompts)."""
    from agents.adapters import adapter_for
    from agents.rl.oreo_value import ValueScorer
    from rewards.prm.value_head import CausalLMWithValueHead

    value_lm = CausalLMWithValueHead.from_pretrained(
        stage.folder / stage.summary["agent"] / "value", dtype=dtype
    )
    value_lm.eval()
    adapter = adapter_for(env)
    return ValueScorer(
        value_lm.backbone,
        value_lm.v_head,
        engine,
        instruction=getattr(adapter, "instruction", ""),
        adapter=adapter,
    )


# --- stage 4: search -------------------------------------------------------------------------------------------


def search_runs(config: MainJobConfig) -> list[tuple[str, int]]:
    """(run, budget) pairs; greedy runs once, best-of-N once at the largest budget (smaller budgets are priced on
    disjoint groups of its samples, ``subset_results``)."""
    runs = [("greedy", 1), ("best_of_n", max(config.budgets))]
    for name in ("beam_search", "mcts"):
        runs += [(name, b) for b in config.budgets]
    return runs


def make_agent(
    run: str, budget: int, config: MainJobConfig, engine: Any, env: Any, prm: Any, value: Any = None
) -> Any:
    import agents

    common = {
        "seed": config.seed,
        "max_steps": config.max_steps,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "batch_problems": config.problems_per_set,
    }
    vote = f"prm_{config.prm_aggregation}_vote"
    if run == "greedy":
        return agents.Greedy(engine, env, **common)
    if run == "best_of_n":  # scored by the PRM so every selection rule can be applied to the same samples
        return agents.BestOfN(engine, env, prm=prm, n=budget, selection=vote, **common)
    if run == "beam_search":
        return agents.BeamSearch(
            engine, env, prm=prm, beam_width=budget, num_expansions=2, selection=vote, **common
        )
    if run == "mcts":
        return agents.MCTS(
            engine, env, prm=prm, num_simulations=budget, num_expansions=2, selection=vote, **common
        )
    if run == "oreo_beam_search":  # OREO's test-time procedure: keep the best states by V, answer the best V
        return agents.BeamSearch(
            engine, env, prm=value, beam_width=budget, num_expansions=2, selection="prm_last_max", **common
        )
    raise ValueError(f"unknown search run {run!r}")


def held_out_sets(config: MainJobConfig, env: Any, exclude: set[str]) -> list[list[dict[str, str]]]:
    """``problem_sets`` disjoint sets of reset options, none of them a training problem."""
    from experiments.benchmark import draw_problems

    sets: list[list[dict[str, str]]] = []
    seen = set(exclude)
    for index in range(config.problem_sets):
        drawn = draw_problems(env, config.problems_per_set * 2, config.test_seed + 100_000 * index)
        fresh = [p for p in drawn if p["problem_id"] not in seen][: config.problems_per_set]
        if len(fresh) < config.problems_per_set:
            raise ValueError(f"not enough held-out problems for set {index} (the env has too few problems)")
        seen.update(p["problem_id"] for p in fresh)
        sets.append(fresh)
    return sets


def build_search(
    config: MainJobConfig,
    folder: Path,
    engine: Any,
    prm: Any,
    exclude: set[str],
    value: Any = None,
    runs: Sequence[tuple[str, int]] | None = None,
    desc: str = "stage 4/4 search",
) -> dict[str, Any]:
    """Every (run, budget) of ``runs`` (default: ``search_runs``) on every held-out set; finished cells go to
    ``cells.jsonl`` at once, so an interrupted build resumes where it stopped."""
    import gymnasium as gym

    import reasoning_gym  # noqa: F401  (registers openr/*)
    from experiments.benchmark import run_agent

    env = gym.make(config.env, **env_kwargs(config, config.levels))
    sets = held_out_sets(config, env, exclude)
    from wrappers.recorder import append_jsonl, read_trajectories

    cells_path = (
        folder / "cells.jsonl"
    )  # one line per finished cell: a kill costs at most the cell being written
    done = set()
    if cells_path.is_file():
        done = {(cell["run"], cell["budget"], cell["set"]) for cell in read_trajectories(cells_path)}
    runs = search_runs(config) if runs is None else runs
    total = len(runs) * sum(len(s) for s in sets)
    bar = _bar(config, total, desc)
    for run, budget in runs:
        for index, problems in enumerate(sets):
            if (run, budget, index) in done:
                bar.update(len(problems))
                continue
            bar.set_postfix_str(f"{run} budget={budget} set={index}")
            agent = make_agent(run, budget, config, engine, env, prm, value)
            reset = getattr(engine, "reset_prefix_cache", None)
            if reset is not None:  # each cell's prompt re-use is its own
                reset()
            results, seconds = run_agent(agent, env, problems, bar)
            cell = {"run": run, "budget": budget, "set": index, "seconds": seconds, "results": results}
            append_jsonl(cells_path, cell)  # cuts a line torn by a killed run before appending
    bar.close()
    env.close()
    return {"cells": "cells.jsonl", "sets": [[p["problem_id"] for p in s] for s in sets]}


# --- the report ------------------------------------------------------------------------------------------------


def compute_of(result: dict[str, Any], with_prm: bool) -> float:
    """Compute one problem cost: generated + processed prompt tokens (+ the PRM's read tokens when it is used)."""
    return float(
        result["generated_tokens"]
        + result["prompt_tokens"]
        + (result.get("prm_tokens", 0) if with_prm else 0)
    )


def subset_results(result: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """Best-of-``budget`` results made from one best-of-N result: its N independent samples split into N // budget
    disjoint groups of ``budget`` (in sampling order), each priced as a run of its own would be: the shared cost
    (the problem's prompt, processed once) plus its candidates' own generated, prompt and PRM-read tokens
    (identical candidates read once)."""
    n = len(result["candidate_answers"])
    if budget >= n:
        return [result]
    own = {key: result[f"candidate_{key}"] for key in ("generated_tokens", "prompt_tokens", "prm_tokens")}
    shared = {key: result[key] - sum(values) for key, values in own.items() if key != "prm_tokens"}
    distinct = dict(zip(result["candidate_keys"], own["prm_tokens"]))
    shared["prm_tokens"] = result["prm_tokens"] - sum(distinct.values())
    groups = []
    for start in range(0, n - budget + 1, budget):
        part = slice(start, start + budget)
        group = {
            key: result[key][part]
            for key in result
            if key.startswith("candidate_") and isinstance(result[key], list)
        }
        read = dict(zip(group["candidate_keys"], group["candidate_prm_tokens"]))
        groups.append(
            {
                **group,
                "generated_tokens": shared["generated_tokens"] + sum(group["candidate_generated_tokens"]),
                "prompt_tokens": shared["prompt_tokens"] + sum(group["candidate_prompt_tokens"]),
                "prm_tokens": shared["prm_tokens"] + sum(read.values()),
                "pass_at_k": any(group["candidate_correct"]),
            }
        )
    return groups


def _correct(result: dict[str, Any], rule: str | None) -> bool:
    """Whether the method's answer is right: the run's own choice, or ``rule`` re-applied to its candidates."""
    if rule is None:
        return bool(result["correct"])
    from agents.search.common import choose_index

    index = choose_index(
        rule, result["candidate_answers"], result["candidate_scores"], result["candidate_terminated"]
    )
    return bool(result["candidate_correct"][index])


def _per_problem(value: Any, groups: Sequence[Sequence[dict[str, Any]]]) -> float:
    """Mean over problems of the mean of ``value`` over each problem's results (one, or one per sample group)."""
    return sum(sum(float(value(r)) for r in g) / len(g) for g in groups) / len(groups)


def method_rows(cells: Sequence[dict[str, Any]], config: MainJobConfig) -> list[dict[str, Any]]:
    """One row per (method, budget): accuracy per held-out set and its mean / min / max, mean compute per problem
    (and its parts), pass@k and seconds. Best-of-N rows below the largest budget average over the disjoint groups
    of the largest run's samples (``subset_results``); their seconds are that run's, scaled by budget / N."""
    by_cell = {(c["run"], c["budget"], c["set"]): c for c in cells}
    largest = max(config.budgets)
    rows = []
    for method, (run, rule, with_prm) in METHODS.items():
        rule = rule.format(agg=config.prm_aggregation) if rule else None
        budgets = [1] if run == "greedy" else list(config.budgets)
        for budget in budgets:
            ran = largest if run == "best_of_n" else budget
            per_set = [by_cell[key] for key in sorted(by_cell) if key[:2] == (run, ran)]
            if not per_set:
                continue
            # per set, per problem: the results the method's row averages (one, or one per disjoint group)
            groups = [
                [subset_results(r, budget) if run == "best_of_n" else [r] for r in c["results"]]
                for c in per_set
            ]
            correct = functools.partial(_correct, rule=rule)
            cost = functools.partial(compute_of, with_prm=with_prm)
            accuracy = [_per_problem(correct, g) for g in groups]
            compute = [_per_problem(cost, g) for g in groups]
            flat = [g for cell_groups in groups for g in cell_groups]

            def mean(key: str, results: list[list[dict]] = flat) -> float:
                return _per_problem(lambda one: float(one.get(key, 0)), results)

            share = budget / ran

            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "accuracy": sum(accuracy) / len(accuracy),
                    "accuracy_min": min(accuracy),
                    "accuracy_max": max(accuracy),
                    "accuracy_per_set": accuracy,
                    "compute": sum(compute) / len(compute),
                    "compute_per_set": compute,
                    "generated_tokens": mean("generated_tokens"),
                    "prompt_tokens": mean("prompt_tokens"),
                    "prm_tokens": mean("prm_tokens") if with_prm else 0.0,
                    "pass_at_k": mean("pass_at_k"),
                    "seconds_per_problem": share * sum(c["seconds"] for c in per_set) / len(flat),
                }
            )
    return rows


def _interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear in log2(x) through ``points`` (x, y), held flat beyond the ends."""
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return max(y0, y1)
            t = (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]


def equal_compute_gaps(
    rows: Sequence[dict[str, Any]], methods: Sequence[str] = ("prm_vote", "prm_beam_search")
) -> list[dict[str, Any]]:
    """Per method and budget: accuracy minus majority vote's accuracy at the same compute, per held-out set
    (majority's curve interpolated in log compute; beyond its largest budget, its value there), and the mean."""
    majority = [r for r in rows if r["method"] == "majority_vote"]
    if not majority:
        return []
    sets = len(majority[0]["accuracy_per_set"])
    curves = [[(r["compute_per_set"][s], r["accuracy_per_set"][s]) for r in majority] for s in range(sets)]
    largest = max(r["compute"] for r in majority)
    gaps = []
    for row in rows:
        if row["method"] not in methods:
            continue
        per_set = [
            row["accuracy_per_set"][s] - _interpolate(curves[s], row["compute_per_set"][s])
            for s in range(sets)
        ]
        gaps.append(
            {
                "method": row["method"],
                "budget": row["budget"],
                "compute": row["compute"],
                "gap": sum(per_set) / sets,
                "gap_min": min(per_set),
                "gap_max": max(per_set),
                "beyond_majority_range": row["compute"] > largest,
            }
        )
    return gaps


def candidate_ranking(cells: Sequence[dict[str, Any]], aggregation: str) -> dict[str, float]:
    """How well the PRM separates right from wrong best-of-N candidates on the held-out sets (a diagnosis; the
    largest budget's samples): ROC-AUC of the aggregated score over all candidates, and within problems (the share of
    (right, wrong) candidate pairs of one problem the PRM orders right, ties half): what re-ranking needs."""
    from experiments.train_prm import binary_auc
    from rewards.prm import aggregate_scores

    runs = [c for c in cells if c["run"] == "best_of_n"]
    if not runs:
        return {}
    largest = max(c["budget"] for c in runs)
    scores, labels, pairs, ordered = [], [], 0, 0.0
    for cell in (c for c in runs if c["budget"] == largest):
        for result in cell["results"]:
            values = [aggregate_scores(s, aggregation) for s in result["candidate_scores"]]
            right = [v for v, ok in zip(values, result["candidate_correct"]) if ok]
            wrong = [v for v, ok in zip(values, result["candidate_correct"]) if not ok]
            scores += values
            labels += list(result["candidate_correct"])
            for r in right:
                for w in wrong:
                    pairs += 1
                    ordered += 1.0 if r > w else 0.5 if r == w else 0.0
    return {
        "budget": largest,
        "candidate_auc": binary_auc(scores, labels),
        "within_problem_pair_accuracy": ordered / pairs if pairs else float("nan"),
        "within_problem_pairs": pairs,
    }


def verdict(
    rows: Sequence[dict[str, Any]],
    gaps: Sequence[dict[str, Any]],
    auc: float | None,
    ranking: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Did PRM-guided search beat majority vote by >= 5 points at equal compute at a budget >= 4, and does its
    accuracy rise with compute? With the numbers that explain the answer either way."""
    best = max((g for g in gaps if g["budget"] >= 4), key=lambda g: g["gap"], default=None)
    rising = {}
    for method in ("prm_vote", "prm_best_of_n", "prm_beam_search", "mcts"):
        curve = sorted((r["budget"], r["accuracy"]) for r in rows if r["method"] == method)
        if len(curve) >= 2:
            rising[method] = curve[-1][1] > curve[0][1]
    pass_at_k = {r["budget"]: r["pass_at_k"] for r in rows if r["method"] == "majority_vote"}
    majority = {r["budget"]: r["accuracy"] for r in rows if r["method"] == "majority_vote"}
    greedy = next((r["accuracy"] for r in rows if r["method"] == "greedy"), None)
    return {
        "beats_majority_by_5_points": bool(best and best["gap"] >= 0.05),
        "best_gap": best,
        "accuracy_rises_with_compute": rising,
        "prm_auc": auc,
        "greedy_accuracy": greedy,
        "majority_accuracy_per_budget": majority,
        "pass_at_k_per_budget": pass_at_k,
        "held_out_candidate_ranking": ranking or {},
    }


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy against compute per problem, one line per method, its spread over the held-out sets as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for method in METHODS:
        points = sorted(
            (r["compute"], r["accuracy"], r["accuracy_min"], r["accuracy_max"], r["budget"])
            for r in rows
            if r["method"] == method
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        (line,) = ax.plot(xs, [p[1] for p in points], marker="o", label=method)
        if len(points) > 1:
            ax.fill_between(
                xs, [p[2] for p in points], [p[3] for p in points], color=line.get_color(), alpha=0.1
            )
        else:
            ax.errorbar(
                xs,
                [p[1] for p in points],
                yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                color=line.get_color(),
                capsize=3,
            )
        for x, y, _, _, budget in points:
            ax.annotate(str(budget), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("compute per problem (generated + processed prompt + PRM-read tokens)")
    ax.set_ylabel("accuracy (mean over held-out sets; band: min-max)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(rows: Sequence[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="test-time scaling at equal compute (per problem; mean over held-out sets)")
    columns = [
        ("method", "method", "{}"),
        ("budget", "budget", "{}"),
        ("acc", "accuracy", "{:.3f}"),
        ("min-max", None, None),
        ("compute", "compute", "{:.0f}"),
        ("generated", "generated_tokens", "{:.0f}"),
        ("prompt", "prompt_tokens", "{:.0f}"),
        ("PRM read", "prm_tokens", "{:.0f}"),
        ("pass@k", "pass_at_k", "{:.3f}"),
        ("s/prob", "seconds_per_problem", "{:.2f}"),
    ]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header == "method" else "right")
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            if key is None:
                cells.append(f"{row['accuracy_min']:.2f}-{row['accuracy_max']:.2f}")
            else:
                cells.append(fmt.format(row[key]))
        table.add_row(*cells)
    return table


def _cpu(stage: StageResult) -> str:
    return f" ({stage.cpu_seconds:.0f} CPU-s)" if stage.cpu_seconds else ""


def write_tensorboard(folder: Path, rows: Sequence[dict[str, Any]], stages: dict[str, StageResult]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(folder, ignore_errors=True)  # one run's scalars, not a pile-up of re-runs
    writer = SummaryWriter(log_dir=str(folder))
    for row in rows:
        method = row["method"]
        writer.add_scalar(
            f"{method}/accuracy_vs_compute", row["accuracy"], global_step=int(round(row["compute"]))
        )
        writer.add_scalar(f"{method}/accuracy_vs_budget", row["accuracy"], global_step=row["budget"])
        writer.add_scalar(f"{method}/compute_vs_budget", row["compute"], global_step=row["budget"])
    prm = stages.get("prm")
    if prm is not None and prm.summary.get("auc") is not None:
        writer.add_scalar("stages/prm_auc", prm.summary["auc"], global_step=0)
    for name, stage in stages.items():
        writer.add_scalar(f"time/{name}_build_seconds", stage.seconds, global_step=0)
    writer.close()


# --- the pipeline ----------------------------------------------------------------------------------------------


def run_pipeline(config: MainJobConfig) -> dict[str, Any]:
    """Run (or reuse) the four stages and write the report; returns what ``results.json`` holds."""
    import torch

    from agents.base import set_global_seed
    from experiments.benchmark import auto_threads

    started = time.perf_counter()
    if config.prm_aggregation not in ("min", "last"):
        raise ValueError("prm_aggregation must be 'min' or 'last'")
    if config.threads is None:
        config.threads = auto_threads()
    torch.set_num_threads(config.threads)
    set_global_seed(config.seed)
    out = Path(config.out)
    cache = StageCache(out / "stages", fresh=config.fresh)
    stages: dict[str, StageResult] = {}

    @functools.cache
    def engine() -> Any:
        """The policy's engine for labelling and search: built once, and only when one of them has to run."""
        from agents.engines import HFEngine

        return HFEngine(policy, dtype=config.dtype, num_threads=config.threads)

    def report(stage: StageResult, extra: str = "") -> None:
        how = "reused" if stage.reused else "built"
        built = f"{stage.seconds:.0f} s{_cpu(stage)} to build"
        print(f"[{stage.name}] {how} {stage.folder} ({built}){extra}", flush=True)

    # 1. the policy
    env_identity = {
        "env": config.env,
        "env_kwargs": config.env_kwargs,
        "data": path_fingerprint(config.data) if config.data else "",
    }
    if config.sft_steps > 0:
        sft_config = {
            **env_identity,
            "model": path_fingerprint(config.model),
            "levels": list(config.sft_levels),
            "steps": config.sft_steps,
            "batch_size": config.sft_batch_size,
            "learning_rate": config.sft_learning_rate,
            "seed": config.seed,
        }
        stages["policy"] = cache.run("policy", sft_config, [], lambda folder: build_policy(config, folder))
        report(stages["policy"])
        policy, policy_key = policy_path(config, stages["policy"]), stages["policy"].key
    else:
        policy, policy_key = config.model, path_fingerprint(config.model)
        print(f"[policy] {policy} as it is (--sft-steps 0)", flush=True)

    # 2. Monte-Carlo labels
    label_config = {**env_identity, **asdict(collect_config(config, "", "")), "model": "", "out": ""}
    stages["labels"] = cache.run(
        "labels", label_config, [policy_key], lambda folder: build_labels(config, folder, engine(), policy)
    )
    labels = stages["labels"]
    report(
        labels,
        f": {labels.summary['solutions']} solutions, sample accuracy {labels.summary['sample_accuracy']:.3f}, "
        f"{labels.summary['positive_step_fraction_hard']:.2f} positive steps, "
        f"{labels.summary.get('mixed_problems', 0)} of {labels.summary['problems']} problems with mixed outcomes",
    )

    # 3. the PRM
    prm_config = {
        k: v
        for k, v in asdict(prm_train_config(config, "", "", Path())).items()
        if k not in ("model", "data", "logdir", "out")
    }
    stages["prm"] = cache.run(
        "prm",
        prm_config,
        [policy_key, labels.key],
        lambda folder: build_prm(config, folder, policy, str(labels.folder / "samples.jsonl")),
    )
    prm_stage = stages["prm"]
    auc = prm_stage.summary.get("auc")
    report(
        prm_stage,
        f": held-out step AUC {auc:.3f} (untrained {prm_stage.summary.get('auc_before', float('nan')):.3f}) "
        f"on {prm_stage.summary.get('eval_steps', 0):.0f} steps of held-out training questions; orders "
        f"{prm_stage.summary.get('pair_accuracy', float('nan')):.3f} (untrained "
        f"{prm_stage.summary.get('pair_accuracy_before', float('nan')):.3f}) of their "
        f"{prm_stage.summary.get('eval_pairs', 0):.0f} within-question (right, wrong) solution pairs right",
    )

    # 4. search on held-out problem sets
    search_config = {
        k: v
        for k, v in asdict(config).items()
        if k
        in (
            "levels",
            "prm_aggregation",
            "budgets",
            "problem_sets",
            "problems_per_set",
            "test_seed",
            "temperature",
            "max_steps",
            "max_new_tokens",
            "dtype",
            "seed",
        )
    }
    exclude = set(json.loads((labels.folder / "problem_ids.json").read_text()))

    def build(folder: Path) -> dict[str, Any]:
        from rewards.prm import load_prm

        prm = load_prm(
            prm_stage.folder / prm_stage.summary["model"], dtype=_model_dtype(config), batch_size=32
        )
        return build_search(config, folder, engine(), prm, exclude)

    search_key = {**env_identity, **search_config}
    stages["search"] = cache.run("search", search_key, [policy_key, prm_stage.key], build)
    report(stages["search"])
    from wrappers.recorder import read_trajectories

    cells = list(read_trajectories(stages["search"].folder / stages["search"].summary["cells"]))
    if config.oreo_steps > 0:  # its own stages, so adding OREO to a finished job reuses the PRM search
        oreo_config = {"steps": config.oreo_steps, "batch_size": config.oreo_batch_size, "seed": config.seed}
        stages["oreo"] = cache.run(
            "oreo",
            {**env_identity, **oreo_config},
            [policy_key, labels.key],
            lambda folder: build_oreo(config, folder, policy, labels.folder, labels.summary["instruction"]),
        )
        report(stages["oreo"])

        def build_oreo_search(folder: Path) -> dict[str, Any]:
            import gymnasium as gym

            probe = gym.make(config.env, **env_kwargs(config, config.levels))
            value = load_oreo_value(stages["oreo"], engine(), probe, _model_dtype(config))
            probe.close()
            runs = [("oreo_beam_search", b) for b in config.budgets]
            return build_search(config, folder, engine(), None, exclude, value, runs, "stage 4b OREO search")

        inputs = [policy_key, labels.key, stages["oreo"].key]
        stages["oreo_search"] = cache.run("oreo_search", search_key, inputs, build_oreo_search)
        report(stages["oreo_search"])
        oreo_cells = stages["oreo_search"].folder / stages["oreo_search"].summary["cells"]
        cells += list(read_trajectories(oreo_cells))
    return write_report(config, out, cells, stages, time.perf_counter() - started)


def write_report(
    config: MainJobConfig, out: Path, cells: list[dict[str, Any]], stages: dict[str, StageResult], wall: float
) -> dict[str, Any]:
    from rich.console import Console

    from agents.engines.hardware import hardware_info

    console = Console(width=None if sys.stdout.isatty() else 150)
    rows = method_rows(cells, config)
    gaps = equal_compute_gaps(rows)
    auc = stages["prm"].summary.get("auc") if "prm" in stages else None
    result_verdict = verdict(rows, gaps, auc, candidate_ranking(cells, config.prm_aggregation))
    search = stages["search"]
    title = (
        f"{config.env} levels {list(config.levels)} | {Path(config.model).name} + SFT {config.sft_steps} steps\n"
        f"PRM step AUC {auc:.2f} | {config.problem_sets} held-out sets x {config.problems_per_set} problems"
    )
    png = plot(rows, out / "accuracy_vs_compute.png", title)
    write_tensorboard(out / "tensorboard", rows, stages)
    summary = {
        "config": asdict(config),
        "hardware": hardware_info(search_dtype=_model_dtype(config)),
        "stages": {
            name: {
                "key": s.key,
                "folder": str(s.folder),
                "reused": s.reused,
                "build_seconds": s.seconds,
                "build_cpu_seconds": s.cpu_seconds,
                "summary": s.summary,
            }
            for name, s in stages.items()
        },
        "held_out_sets": search.summary["sets"],
        "rows": rows,
        "equal_compute_gaps": gaps,
        "verdict": result_verdict,
        "wall_seconds": wall,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(_table(rows))
    print("PRM-guided accuracy minus majority vote's at the same compute (mean over sets, min..max):")
    for gap in gaps:
        note = " (beyond majority's largest budget)" if gap["beyond_majority_range"] else ""
        print(
            f"  {gap['method']:16s} budget {gap['budget']:>2d}: {gap['gap']:+.3f} ({gap['gap_min']:+.3f}..{gap['gap_max']:+.3f}){note}"
        )
    v = result_verdict
    best = v["best_gap"]
    print(
        f"verdict: PRM vote / beam beat majority by >= 5 points at equal compute (budget >= 4): "
        f"{'YES' if v['beats_majority_by_5_points'] else 'NO'}"
        + (f" (best {best['method']} at budget {best['budget']}: {best['gap']:+.3f})" if best else "")
    )
    print(f"  accuracy rises with compute: {v['accuracy_rises_with_compute']}")
    print(
        f"  why: PRM held-out step AUC {auc:.3f}; greedy {v['greedy_accuracy']:.3f}; majority vote per budget "
        + ", ".join(f"{b}: {a:.3f}" for b, a in v["majority_accuracy_per_budget"].items())
        + "; pass@k (best-of-N) per budget "
        + ", ".join(f"{b}: {a:.3f}" for b, a in v["pass_at_k_per_budget"].items())
    )
    ranking = v["held_out_candidate_ranking"]
    if ranking:
        print(
            f"  the PRM on the held-out best-of-{ranking['budget']} candidates: AUC {ranking['candidate_auc']:.3f}; "
            f"orders {ranking['within_problem_pair_accuracy']:.3f} of {ranking['within_problem_pairs']} "
            "(right, wrong) pairs of the same problem right"
        )
    print(
        f"results: {out / 'results.json'}\nplot: {png}\ntensorboard: tensorboard --logdir {out / 'tensorboard'}"
    )
    print(
        f"wall time {wall:.0f} s; stage build times: "
        + ", ".join(
            f"{n} {s.seconds:.0f} s{_cpu(s)}{' reused' if s.reused else ''}" for n, s in stages.items()
        )
    )
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import tyro

    # OpenMP workers that sleep instead of spin: with another process on one of the two cores, two spinning torch
    # threads ran 12x slower here, two passive ones 1.3x. Set before torch starts its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    config = tyro.cli(MainJobConfig, args=argv, description=__doc__.split("\n\n")[0])
    return run_pipeline(config)


if __name__ == "__main__":
    main()
