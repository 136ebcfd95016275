"""Train a Stable-Baselines3 step selector on the candidate-choice view and compare it with hand-written rules.

The selector (PPO, DQN or A2C with SB3's ``MlpPolicy``) learns on the training problems; then every selector plays
one episode per held-out problem over the same candidates:

- ``learned``: the SB3 policy, deterministic;
- ``random``: a uniformly random real candidate (averaged over ``random_episodes`` episodes per problem);
- ``most_sampled``: slot 0, the candidate the engine sampled most often (admissible mode without an engine: the
  first in the view's order);
- ``likelihood``: the highest mean token log-prob;
- ``prm``: the highest scorer score (only when the cache holds scores);
- ``majority_vote``: ``agents.search.selection.majority_vote`` over the K samples' results (final answer, else the
  last number), duplicates counted as votes;
- ``goal_overlap`` (ALFWorld): the candidate sharing most words with the goal among those not taken before.

Arithmetic reads two caches written by ``experiments/collect_candidates.py`` (training and held-out problems);
ALFWorld plays generated games, admissible commands as candidates, without an engine (train split for training,
``valid_unseen`` for held-out). Writes ``<out_dir>/<task>_<algo>.json`` and ``<out_dir>/<task>.png`` (every algo
whose JSON is in ``out_dir``), and prints a table.

Example::

    python -m experiments.train_sb3 --algo ppo --task arithmetic --train-cache runs/sb3/arith_l2_train.jsonl \\
        --test-cache runs/sb3/arith_l2_test.jsonl --out-dir runs/sb3 --threads 1
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

__all__ = ["HAND_RULES", "TrainSB3Config", "evaluate_selector", "main", "measure_env_speed"]


@dataclass
class TrainSB3Config:
    """One SB3 algorithm on one task, several seeds, evaluated against the hand-written rules."""

    algo: Literal["ppo", "dqn", "a2c"] = "ppo"
    """SB3 algorithm."""
    task: Literal["arithmetic", "alfworld"] = "arithmetic"
    """Arithmetic (from candidate caches) or ALFWorld (generated games, admissible commands)."""
    train_cache: str = "runs/sb3/arith_l2_train.jsonl"
    """Arithmetic: candidate cache of the training problems."""
    test_cache: str = "runs/sb3/arith_l2_test.jsonl"
    """Arithmetic: candidate cache of the held-out problems."""
    alfworld_train_games: int = 24
    """ALFWorld: generated training games (split "train")."""
    alfworld_test_games: int = 12
    """ALFWorld: generated held-out games (split "valid_unseen")."""
    alfworld_task_types: tuple[str, ...] = ("pick_and_place_simple",)
    """ALFWorld task types."""
    alfworld_max_steps: int = 20
    """ALFWorld episode step limit."""
    alfworld_k: int = 48
    """ALFWorld candidate slots (admissible commands beyond it are dropped)."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (each trains and evaluates one selector)."""
    total_timesteps: int = 10_000
    """Env steps of training per seed."""
    n_envs: int = 4
    """Parallel envs of SB3's vector env."""
    vec_env: Literal["dummy", "subproc"] = "dummy"
    """``DummyVecEnv`` (one process) or ``SubprocVecEnv`` (one process per env)."""
    random_episodes: int = 10
    """Episodes per held-out problem for the random baseline."""
    train_eval_problems: int = 64
    """The learned selector is also evaluated on (at most) this many training problems, to show over-fitting."""
    ppo_n_steps: int = 256
    """PPO: steps per env per update (one update = ``ppo_n_steps * n_envs`` steps, 10 epochs of minibatches of 256)."""
    speed_steps: int = 5_000
    """Env steps (random actions) for the env-speed measurement; 0 skips it."""
    speed_warmup: int = 500
    """Untimed env steps before the speed measurement."""
    out_dir: str = "runs/sb3"
    """Where JSON, PNG, SB3 logs and models go."""
    threads: int = 1
    """Torch CPU threads."""


# -- envs -----------------------------------------------------------------------------------------------------------
def arithmetic_factory(cache_path: str) -> tuple[Callable[[], Any], list[str], dict[str, Any]]:
    """A picklable env constructor for a cache (the cache is loaded once per process), its problems, its meta."""
    from wrappers.candidate_choice import CandidateCache

    cache = CandidateCache.load(cache_path)
    collect = cache.meta.get("collect", {})
    env_id = collect.get("env_id", "openr/Arithmetic-v0")
    env_kwargs = json.loads(collect.get("env_kwargs", "{}"))
    steps = int(collect.get("max_episode_steps", 3))

    def make() -> Any:
        import gymnasium as gym

        import reasoning_gym  # noqa: F401
        from wrappers.candidate_choice import CandidateChoice

        return CandidateChoice.from_cache(
            gym.make(env_id, max_episode_steps=steps, **env_kwargs), _loaded(cache_path)
        )

    return make, cache.problem_ids(), cache.meta


_CACHES: dict[str, Any] = {}


def _loaded(path: str) -> Any:
    from wrappers.candidate_choice import CandidateCache

    if path not in _CACHES:
        _CACHES[path] = CandidateCache.load(path)
    return _CACHES[path]


def alfworld_factory(config: TrainSB3Config, split: str, games: int) -> tuple[Callable[[], Any], list[str]]:
    """Admissible-command view of generated ALFWorld games (no engine)."""
    task_types = list(config.alfworld_task_types)
    k, steps = config.alfworld_k, config.alfworld_max_steps

    def make() -> Any:
        import gymnasium as gym

        import reasoning_gym  # noqa: F401
        from wrappers.candidate_choice import CandidateChoice

        inner = gym.make(
            "openr/ALFWorld-v0",
            split=split,
            num_games=games,
            task_types=task_types,
            source="generated",
            max_episode_steps=steps,
        )
        return CandidateChoice(inner, None, k=k, candidates="admissible")

    probe = make()
    problem_ids = list(probe.unwrapped.pool.problem_ids)
    probe.close()
    return make, problem_ids


# -- selectors ------------------------------------------------------------------------------------------------------
def _valid_slots(features: np.ndarray) -> np.ndarray:
    from wrappers.candidate_choice import FEATURES

    return np.flatnonzero(features[:, FEATURES.index("valid")] > 0)


def _argmax_feature(name: str) -> Callable[[np.ndarray, Any, np.random.Generator], int]:
    def choose(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
        from wrappers.candidate_choice import FEATURES

        valid = _valid_slots(features)
        values = features[valid, FEATURES.index(name)]
        return int(valid[int(np.argmax(values))]) if len(valid) else 0

    return choose


def _random(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    valid = _valid_slots(features)
    return int(rng.choice(valid)) if len(valid) else 0


def _most_sampled(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    return 0


def _majority_vote(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    """Self-consistency over the K samples: each merged candidate votes ``round(share * k)`` times."""
    from agents.search.selection import majority_vote
    from wrappers.candidate_choice import candidate_result

    candidates = env.get_wrapper_attr("candidates")
    k = env.get_wrapper_attr("k")
    owners, answers = [], []
    for slot, candidate in enumerate(candidates):
        votes = max(1, round(candidate.share * k))
        owners += [slot] * votes
        answers += [candidate_result(candidate.text)] * votes
    return owners[majority_vote(answers)] if answers else 0


def _goal_overlap(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    from wrappers.candidate_choice import FEATURES

    valid = _valid_slots(features)
    fresh = [s for s in valid if features[s, FEATURES.index("repeat")] == 0] or list(valid)
    values = [features[s, FEATURES.index("goal_overlap")] for s in fresh]
    return int(fresh[int(np.argmax(values))]) if fresh else 0


HAND_RULES: dict[str, Callable[[np.ndarray, Any, np.random.Generator], int]] = {
    "random": _random,
    "most_sampled": _most_sampled,
    "likelihood": _argmax_feature("mean_logprob"),
    "prm": _argmax_feature("score"),
    "majority_vote": _majority_vote,
    "goal_overlap": _goal_overlap,
}


def rules_for(task: str, meta: dict[str, Any]) -> list[str]:
    if task == "alfworld":  # no engine: no log-probs, no samples to vote, no scorer
        return ["random", "most_sampled", "goal_overlap"]
    rules = ["random", "most_sampled", "likelihood", "majority_vote"]
    return rules + (["prm"] if meta.get("scorer") else [])


def evaluate_selector(
    env: Any,
    problem_ids: Sequence[str],
    choose: Callable[[np.ndarray, Any, np.random.Generator], int],
    episodes: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Success rate and mean return of ``choose(features, env, rng)`` over one or more episodes per problem."""
    from wrappers.candidate_choice import feature_matrix

    rng = np.random.default_rng(seed)
    successes, returns = [], []
    for problem_id in problem_ids:
        for _ in range(episodes):
            observation, _ = env.reset(options={"problem_id": problem_id})
            total, done, info = 0.0, False, {}
            while not done:
                action = choose(feature_matrix(observation), env, rng)
                observation, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                done = terminated or truncated
            successes.append(float(info.get("is_success", False)))
            returns.append(total)
    return {
        "success": float(np.mean(successes)),
        "return": float(np.mean(returns)),
        "episodes": len(successes),
    }


def measure_env_speed(make: Callable[[], Any], steps: int, seed: int = 0, warmup: int = 500) -> float:
    """Env steps per second of the view under uniformly random valid choices (resets included), after ``warmup``
    untimed steps (the first judgements start the math-verify worker, about a second once per process)."""
    from wrappers.candidate_choice import feature_matrix

    env = make()
    rng = np.random.default_rng(seed)
    observation, _ = env.reset(seed=seed)
    started = time.perf_counter()
    for index in range(warmup + steps):
        if index == warmup:
            started = time.perf_counter()
        observation, _, terminated, truncated, _ = env.step(_random(feature_matrix(observation), env, rng))
        if terminated or truncated:
            observation, _ = env.reset()
    rate = steps / (time.perf_counter() - started)
    env.close()
    return rate


# -- training -------------------------------------------------------------------------------------------------------
def make_model(config: TrainSB3Config, env: Any, seed: int, log_dir: Path) -> Any:
    """The SB3 model with settings for short episodes (a few steps) and a small budget."""
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.logger import configure

    common = {"seed": seed, "verbose": 0, "device": "cpu", "gamma": 0.99}
    if config.algo == "ppo":
        batch = min(256, config.ppo_n_steps * config.n_envs)
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=config.ppo_n_steps,
            batch_size=batch,
            n_epochs=10,
            ent_coef=0.01,
            **common,
        )
    elif config.algo == "a2c":
        model = A2C("MlpPolicy", env, n_steps=8, ent_coef=0.01, **common)
    else:
        model = DQN(
            "MlpPolicy",
            env,
            learning_starts=500,
            buffer_size=config.total_timesteps,
            exploration_fraction=0.3,
            target_update_interval=500,
            train_freq=4,
            **common,
        )
    model.set_logger(configure(str(log_dir), ["csv"]))
    return model


def vector_env(config: TrainSB3Config, make: Callable[[], Any], problem_ids: Sequence[str], seed: int) -> Any:
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    def monitored() -> Any:
        env = make()
        env.problem_ids = list(problem_ids)
        return Monitor(env, info_keywords=("is_success",))

    vec_class = SubprocVecEnv if config.vec_env == "subproc" else DummyVecEnv
    env = vec_class([monitored] * config.n_envs)
    env.seed(seed)
    return env


def train_and_evaluate(
    config: TrainSB3Config,
    make_train: Callable[[], Any],
    train_ids: Sequence[str],
    make_test: Callable[[], Any],
    test_ids: Sequence[str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    import torch

    out = Path(config.out_dir)
    test_env = make_test()
    test_env.problem_ids = list(test_ids)
    results: dict[str, Any] = {"rules": {}, "rules_on_training_problems": {}, "learned": []}
    train_env = make_train_env(make_train, train_ids)
    for rule in rules_for(config.task, meta):
        episodes = config.random_episodes if rule == "random" else 1
        results["rules"][rule] = evaluate_selector(test_env, test_ids, HAND_RULES[rule], episodes)
        on_train = evaluate_selector(
            train_env, train_ids[: config.train_eval_problems], HAND_RULES[rule], episodes
        )
        results["rules_on_training_problems"][rule] = on_train
        print(
            f"  {rule:>14}: held-out success {results['rules'][rule]['success']:.3f}, "
            f"training problems {on_train['success']:.3f}"
        )
    for seed in config.seeds:
        torch.manual_seed(seed)
        log_dir = out / f"{config.task}_{config.algo}_s{seed}"
        env = vector_env(config, make_train, train_ids, seed)
        model = make_model(config, env, seed, log_dir)
        started = time.perf_counter()
        model.learn(total_timesteps=config.total_timesteps)
        seconds = time.perf_counter() - started
        env.close()
        model.save(str(log_dir / "model"))

        def learned(features: np.ndarray, env: Any, rng: np.random.Generator, model: Any = model) -> int:
            action, _ = model.predict(features.ravel(), deterministic=True)
            return int(action)

        row = {
            "seed": seed,
            "train_seconds": seconds,
            "train_fps": config.total_timesteps / seconds,
            "held_out": evaluate_selector(test_env, test_ids, learned),
            "train_problems": evaluate_selector(train_env, train_ids[: config.train_eval_problems], learned),
        }
        results["learned"].append(row)
        print(
            f"  {config.algo} seed {seed}: held-out success {row['held_out']['success']:.3f}, "
            f"training problems {row['train_problems']['success']:.3f}, {row['train_fps']:.0f} steps/s"
        )
    test_env.close()
    train_env.close()
    return results


def make_train_env(make: Callable[[], Any], problem_ids: Sequence[str]) -> Any:
    env = make()
    env.problem_ids = list(problem_ids)
    return env


# -- report ---------------------------------------------------------------------------------------------------------
def plot(out_dir: Path, task: str) -> Path:
    """Bars of held-out success: every hand rule and every algo found in ``out_dir`` (mean and each seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        p.stem.split("_", 1)[1]: json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{task}_*.json"))
    }
    if not runs:
        raise FileNotFoundError(f"no {task}_*.json in {out_dir}")
    first = next(iter(runs.values()))
    names, means, points = [], [], []
    for rule, row in first["results"]["rules"].items():
        names.append(rule)
        means.append(row["success"])
        points.append([])
    for algo, run in runs.items():
        values = [row["held_out"]["success"] for row in run["results"]["learned"]]
        names.append(f"{algo} (learned)")
        means.append(float(np.mean(values)))
        points.append(values)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    colors = ["#999999"] * len(first["results"]["rules"]) + ["#1f77b4"] * len(runs)
    ax.bar(range(len(names)), means, color=colors)
    for x, values in enumerate(points):
        ax.scatter([x] * len(values), values, color="black", zorder=3, s=12)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("held-out success rate")
    ax.set_title(
        f"{task}: step selectors over the same candidates ({len(first['test_problems'])} held-out problems)"
    )
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path = out_dir / f"{task}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(config: TrainSB3Config) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.task == "arithmetic":
        make_train, train_ids, meta = arithmetic_factory(config.train_cache)
        make_test, test_ids, test_meta = arithmetic_factory(config.test_cache)
        keys = ("k", "candidates", "temperature", "top_p", "max_new_tokens")
        if any(meta.get(key) != test_meta.get(key) for key in keys):
            raise ValueError(
                "the training and held-out caches were collected with different candidate settings"
            )
    else:
        make_train, train_ids = alfworld_factory(config, "train", config.alfworld_train_games)
        make_test, test_ids = alfworld_factory(config, "valid_unseen", config.alfworld_test_games)
        meta = {"candidates": "admissible", "k": config.alfworld_k}
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise ValueError(f"training and held-out problems overlap: {sorted(overlap)[:5]}")
    print(f"{config.task}: {len(train_ids)} training problems, {len(test_ids)} held-out, algo {config.algo}")
    speed = None
    if config.speed_steps:
        speed = measure_env_speed(make_train, config.speed_steps, warmup=config.speed_warmup)
    if speed is not None:
        print(f"  view speed without an engine: {speed:.0f} env steps/s (random choices)")
    results = train_and_evaluate(config, make_train, train_ids, make_test, test_ids, meta)
    report = {
        "config": asdict(config),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "candidate_settings": {
            key: meta.get(key) for key in ("k", "candidates", "temperature", "max_new_tokens")
        },
        "collect_summary": meta.get("summary"),
        "env_steps_per_second": speed,
        "train_problems": list(train_ids),
        "test_problems": list(test_ids),
        "results": results,
    }
    path = out / f"{config.task}_{config.algo}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path} and {plot(out, config.task)}")
    return report


if __name__ == "__main__":
    main(tyro.cli(TrainSB3Config))
