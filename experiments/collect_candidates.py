"""First pass for ``wrappers.CandidateChoice``: propose candidates at every reachable state of a fixed problem set.

Why: generation dominates the cost of the candidate-choice view. This script walks, breadth first, the tree of
states the view can reach on the given problems (every candidate of every state is stepped, up to the episode's
step limit), proposing the candidates of a whole wave of states in one batched engine call, and writes them to a
``CandidateCache``. With the cache, ``CandidateChoice(env, engine=None, cache=path)`` never needs the engine, so
Stable-Baselines3 trains on it at the env's own speed. Prints the tree size, the candidates per state and the share of
problems some path solves (the ceiling of any selector).

Example (the Arithmetic level-2 training set of docs/sb3.md)::

    python -m experiments.collect_candidates --init runs/rl/sft/agent --problems 48 --first-seed 0 \\
        --out runs/sb3/arith_l2_train.jsonl --threads 1
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

__all__ = ["CollectConfig", "collect", "main"]


@dataclass
class CollectConfig:
    """What to collect: problems, engine and candidate settings, output file."""

    env_id: str = "openr/Arithmetic-v0"
    """Registered env id."""
    env_kwargs: str = '{"level": 2}'
    """JSON object of keyword arguments for ``gym.make``."""
    max_episode_steps: int = 3
    """Step limit of an episode (and depth of the state tree)."""
    problems: int = 48
    """Number of problems: the ones ``reset(seed=first_seed + i)`` draws."""
    first_seed: int = 0
    """Seed of the first problem (use disjoint ranges for training and held-out sets)."""
    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder (used when ``init`` is not given)."""
    init: str | None = "runs/rl/sft/agent"
    """A saved agent folder (its ``policy/``) or HF folder to propose with; None uses ``model``."""
    dtype: str = "auto"
    """Engine dtype: auto (bf16 only where the CPU runs it fast), float32 or bfloat16."""
    k: int = 8
    """Samples per state (before duplicates are merged)."""
    candidates: Literal["sampled", "admissible"] = "sampled"
    """"sampled" steps, or "admissible" commands scored by the engine (text games)."""
    temperature: float = 1.3
    """Sampling temperature of the proposals."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 48
    """Token limit of one proposed step."""
    prm: str | None = None
    """A saved PRM folder (``rewards.load_prm``) to score every candidate; None for no scorer."""
    states_per_call: int = 32
    """States whose candidates are proposed in one engine call."""
    seed: int = 0
    """Generation seed (each wave adds its index)."""
    threads: int = 1
    """Torch CPU threads."""
    out: str = "runs/sb3/candidates.jsonl"
    """Where the cache is written (JSON lines)."""


def load_engine(config: CollectConfig) -> Any:
    """An ``HFEngine`` over ``init`` (a saved agent's ``policy/``) or ``model``."""
    from agents.engines import HFEngine, load_model

    path = config.model
    if config.init:
        folder = Path(config.init)
        path = str(folder / "policy") if (folder / "policy").is_dir() else str(folder)
    model, tokenizer = load_model(path, dtype=config.dtype)
    return HFEngine(model, tokenizer, num_threads=config.threads)


def collect(config: CollectConfig, engine: Any, scorer: Any = None, progress: bool = True) -> dict[str, Any]:
    """Walk every problem's state tree, fill and save the cache; return a summary."""
    import gymnasium as gym
    from tqdm import tqdm

    import reasoning_gym  # noqa: F401  (registers the openr/* ids)
    from wrappers.candidate_choice import CandidateCache, CandidateProposer, state_key

    env = gym.make(config.env_id, max_episode_steps=config.max_episode_steps, **json.loads(config.env_kwargs))
    base = env.unwrapped
    proposer = CandidateProposer(
        env,
        engine,
        k=config.k,
        scorer=scorer,
        candidates=config.candidates,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
    )
    cache = CandidateCache({**proposer.settings, "env_id": config.env_id, "collect": asdict(config)})
    frontier: list[tuple[str, dict[str, Any], Any, int]] = []
    for index in range(config.problems):
        observation, info = env.reset(seed=config.first_seed + index)
        frontier.append((observation, dict(info), base.get_state(), 0))
    solved: dict[str, bool] = {info["problem_id"]: False for _, info, _, _ in frontier}
    started, waves, transitions = time.perf_counter(), 0, 0
    bar = tqdm(desc="states", unit="state", disable=not progress)
    while frontier:
        upcoming: list[tuple[str, dict[str, Any], Any, int]] = []
        queued = set()
        for first in range(0, len(frontier), config.states_per_call):
            wave = frontier[first : first + config.states_per_call]
            proposals = proposer.propose(
                [info for _, info, _, _ in wave],
                [obs for obs, _, _, _ in wave],
                seed=config.seed * 1_000_003 + waves,
            )
            waves += 1
            for (_, info, state, depth), candidates in zip(wave, proposals):
                key = state_key(info)
                cache.put(key, candidates)
                for candidate in candidates:
                    base.set_state(state)
                    observation, reward, terminated, _, child = base.step(candidate.text)
                    transitions += 1
                    child = dict(child)
                    if terminated and reward > 0:
                        solved[key[0]] = True
                    child_key = state_key(child)
                    if terminated or depth + 1 >= config.max_episode_steps:
                        continue
                    if child_key in cache or child_key in queued:
                        continue
                    queued.add(child_key)
                    upcoming.append((observation, child, base.get_state(), depth + 1))
            bar.update(len(wave))
        frontier = upcoming
    bar.close()
    elapsed = time.perf_counter() - started
    sizes = [len(cache.get(key) or []) for key in cache.keys()]
    summary = {
        "problems": config.problems,
        "states": len(cache),
        "transitions": transitions,
        "engine_calls": waves,
        "mean_candidates_per_state": sum(sizes) / max(1, len(sizes)),
        "solvable_share": sum(solved.values()) / max(1, len(solved)),
        "seconds": elapsed,
        "generated_tokens": getattr(getattr(engine, "stats", None), "generated_tokens", None),
    }
    cache.meta["summary"] = summary
    cache.save(config.out)
    return summary


def main(config: CollectConfig) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.threads)
    engine = load_engine(config)
    scorer = None
    if config.prm:
        from rewards import load_prm

        scorer = load_prm(config.prm)
    summary = collect(config, engine, scorer)
    print(json.dumps(summary, indent=2))
    print(f"wrote {config.out}")
    return summary


if __name__ == "__main__":
    main(tyro.cli(CollectConfig))
