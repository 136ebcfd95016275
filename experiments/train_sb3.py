"""Train a Stable-Baselines3 step selector on the candidate-choice view and compare it with hand-written rules.

The selector (PPO, DQN or A2C; ``--policy slot``: one shared scorer per candidate slot from ``agents.slot_policy``,
``--policy mlp``: SB3's ``MlpPolicy`` over the flat vector) learns on the training problems, minus a validation split
of them: every ``eval_every`` steps the selector (deterministic unless ``--no-deterministic``) plays the validation problems and the best checkpoint is
kept (early stopping), so the number of training steps is chosen without looking at the held-out problems. Then every
selector plays one episode per held-out problem over the same candidates:

- ``learned``: the SB3 policy, deterministic (``--no-deterministic``: sampled, ``random_episodes`` episodes a problem);
- ``random``: a uniformly random real candidate (averaged over ``random_episodes`` episodes per problem);
- ``most_sampled``: slot 0, the candidate the engine sampled most often (admissible mode without an engine: the
  first in the view's order);
- ``likelihood``: the highest mean token log-prob;
- ``prm``: the highest scorer score (only when the cache holds scores);
- ``majority_vote``: ``agents.search.selection.majority_vote`` over the K samples' results (final answer, else the
  last number), duplicates counted as votes;
- ``goal_overlap`` (ALFWorld): the candidate sharing most words with the goal among those not taken before;
- ``explore`` (ALFWorld): a random command among those neither taken before nor going to a visited place;
- ``goal_explore`` (ALFWorld): the same fresh commands, most goal words first, ties broken at random;
- ``goal_seek`` (ALFWorld): a pick-and-place plan from the goal features (``object_in_goal``, ``target_in_goal``,
  ``holding``): put / transform / take the goal's object, carry it to the goal's places, else open and explore.

``--warm-start reference`` first clones the reference rule (below) into the policy (``agents.demonstrations``), so RL
refines the rule instead of starting from a random selector; the step-0 validation checkpoint is then the clone.

The comparison that decides "does the learned selector match the best rule": the *reference rule* is the rule best on
the training problems (chosen without the held-out ones), and every seed is compared with it problem by problem on
the held-out set (``paired_comparison``: difference, bootstrap interval, wins / losses, sign test), plus the share of
decisions where it takes the rule's candidate (``decision_agreement``). Arithmetic also prints how well each feature
orders the candidates of one state (``within_state_ranking``).

Arithmetic reads two caches written by ``experiments/collect_candidates.py`` (training and held-out problems);
ALFWorld plays generated games of several task types, admissible commands as candidates, without an engine (train split
for training, ``valid_unseen`` for held-out), 50 steps an episode (ALFWorld's usual limit). Writes ``<out_dir>/<task>_<algo>.json`` and ``<out_dir>/<task>.png`` (every algo
whose JSON is in ``out_dir``), and prints a table.

Example::

    python -m experiments.train_sb3 --algo ppo --task arithmetic --train-cache runs/sb3/arith_l2_train.jsonl \\
        --test-cache runs/sb3/arith_l2_test.jsonl --out-dir runs/sb3 --threads 1
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

__all__ = [
    "HAND_RULES",
    "TrainSB3Config",
    "decision_agreement",
    "evaluate_selector",
    "main",
    "measure_env_speed",
    "paired_comparison",
    "within_state_ranking",
]


@dataclass
class TrainSB3Config:
    """One SB3 algorithm on one task, several seeds, evaluated against the hand-written rules."""

    algo: Literal["ppo", "dqn", "a2c"] = "ppo"
    """SB3 algorithm."""
    policy: Literal["slot", "mlp"] = "slot"
    """``slot``: one MLP shared by all candidate slots (``agents.slot_policy``); ``mlp``: SB3's ``MlpPolicy``."""
    task: Literal["arithmetic", "alfworld"] = "arithmetic"
    """Arithmetic (from candidate caches) or ALFWorld (generated games, admissible commands)."""
    train_cache: tuple[str, ...] = ("runs/sb3/arith_l2_train.jsonl",)
    """Arithmetic: candidate cache(s) of the training problems (parts collected separately are merged)."""
    test_cache: tuple[str, ...] = ("runs/sb3/arith_l2_test.jsonl",)
    """Arithmetic: candidate cache(s) of the held-out problems."""
    alfworld_train_games: int = 24
    """ALFWorld: generated training games (split "train")."""
    alfworld_test_games: int = 12
    """ALFWorld: generated held-out games (split "valid_unseen")."""
    alfworld_task_types: tuple[str, ...] = (
        "pick_and_place_simple",
        "look_at_obj_in_light",
        "pick_clean_then_place_in_recep",
    )
    """ALFWorld task types (the generator cycles through them by seed)."""
    alfworld_max_steps: int = 50
    """ALFWorld episode step limit (50, as ALFWorld's own evaluations)."""
    alfworld_k: int = 64
    """ALFWorld candidate slots (admissible commands beyond it are dropped)."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (each trains and evaluates one selector)."""
    total_timesteps: int = 10_000
    """Env steps of training per seed (the most; the validation split picks the checkpoint)."""
    validation_fraction: float = 0.25
    """Share of the training problems held back to pick the checkpoint (early stopping); 0 keeps the last model."""
    eval_every: int = 1_000
    """Env steps between two validation evaluations."""
    n_envs: int = 4
    """Parallel envs of SB3's vector env."""
    vec_env: Literal["dummy", "subproc"] = "dummy"
    """``DummyVecEnv`` (one process) or ``SubprocVecEnv`` (one process per env)."""
    random_episodes: int = 10
    """Episodes per held-out problem for the random baseline."""
    train_eval_problems: int = 100_000
    """The rules and the learned selector are also evaluated on (at most) this many training problems: over-fitting,
    and the reference rule (the rule best on the training problems) is picked there (0: skipped, for slow envs)."""
    ppo_n_steps: int = 256
    """PPO: steps per env per update (one update = ``ppo_n_steps * n_envs`` steps, 10 epochs of minibatches of 256)."""
    speed_steps: int = 5_000
    """Env steps (random actions) for the env-speed measurement; 0 skips it."""
    speed_warmup: int = 500
    """Untimed env steps before the speed measurement."""
    out_dir: str = "runs/sb3"
    """Where JSON, PNG, SB3 logs and models go."""
    summary_only: bool = False
    """Only print the table of every ``<task>_*.json`` in ``out_dir`` (no training)."""
    threads: int = 1
    """Torch CPU threads."""
    warm_start: str = "none"
    """``none``: RL from a random initialisation. ``reference``: before RL, clone the reference rule (the rule best on
    the training problems) on the fit problems (``agents.demonstrations``: behaviour cloning with a Monte-Carlo
    critic; DQN: DQfD's large-margin loss), so RL refines the rule, and the validation checkpoint at step 0 is the
    clone. Or a rule's name (``goal_seek``, ``likelihood``, ...)."""
    clone_epochs: int = 300
    """Epochs of cloning over the demonstrations (``warm_start`` only). 30 under-fit ALFWorld's ``goal_seek`` (1,233
    states, 150 updates: the clone won 0 of 32 training games, the rule 0.66; 300 epochs: 0.50 deterministic, 0.72
    sampled; docs/sb3.md)."""
    deterministic: bool = True
    """The learned selector takes its argmax (SB3's ``deterministic=True``). ``False``: it draws from its policy, over
    ``random_episodes`` episodes a problem as the randomised rules are: the like-for-like comparison when the
    reference rule breaks ties at random (ALFWorld's ``goal_seek``). Actor-critic algorithms only (PPO, A2C)."""
    warm_start_exploration: float = 0.1
    """DQN after a warm start: the initial epsilon of its schedule (1.0 from scratch would first act at random)."""


# -- envs -----------------------------------------------------------------------------------------------------------
def arithmetic_factory(cache_paths: Sequence[str]) -> tuple[Callable[[], Any], list[str], dict[str, Any]]:
    """A picklable env constructor for one or more cache parts (merged, loaded once per process), their problems
    and meta."""
    paths = tuple(cache_paths)
    cache = _loaded(paths)
    collect = cache.meta.get("collect", {})
    env_id = collect.get("env_id", "openr/Arithmetic-v0")
    env_kwargs = json.loads(collect.get("env_kwargs", "{}"))
    steps = int(collect.get("max_episode_steps", 3))

    def make() -> Any:
        import gymnasium as gym

        import reasoning_gym  # noqa: F401
        from wrappers.candidate_choice import CandidateChoice

        return CandidateChoice.from_cache(
            gym.make(env_id, max_episode_steps=steps, **env_kwargs), _loaded(paths)
        )

    return make, cache.problem_ids(), cache.meta


_CACHES: dict[tuple[str, ...], Any] = {}


def _loaded(paths: tuple[str, ...]) -> Any:
    from wrappers.candidate_choice import CandidateCache

    if paths not in _CACHES:
        _CACHES[paths] = CandidateCache.merged(paths)
    return _CACHES[paths]


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


def _fresh(features: np.ndarray) -> list[int]:
    """Real slots whose command was not taken before and does not go back to a visited place (all if none)."""
    from wrappers.candidate_choice import FEATURES

    valid = _valid_slots(features)
    stale = features[:, FEATURES.index("repeat")] + features[:, FEATURES.index("revisit")]
    return [int(s) for s in valid if stale[s] == 0] or [int(s) for s in valid]


def _explore(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    fresh = _fresh(features)
    return int(rng.choice(fresh)) if fresh else 0


def _goal_explore(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    from wrappers.candidate_choice import FEATURES

    fresh = _fresh(features)
    if not fresh:
        return 0
    overlap = features[fresh, FEATURES.index("goal_overlap")]
    best = [s for s, value in zip(fresh, overlap) if value == overlap.max()]
    return int(rng.choice(best))


def _goal_overlap(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    from wrappers.candidate_choice import FEATURES

    valid = _valid_slots(features)
    fresh = [s for s in valid if features[s, FEATURES.index("repeat")] == 0] or list(valid)
    values = [features[s, FEATURES.index("goal_overlap")] for s in fresh]
    return int(fresh[int(np.argmax(values))]) if fresh else 0


def _goal_seek(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
    """A pick-and-place plan from the command features alone (ALFWorld): act on the goal's object when possible
    (transform it, or put it where the goal says), else take it, else (carrying it) go to the goal's places, else open
    what is closed here, else explore places not visited; ties at random. Written so that the slot scorer can
    express it (every stage is a conjunction of at most four binary features)."""
    from wrappers.candidate_choice import FEATURES

    valid = _valid_slots(features)
    if not len(valid):
        return 0

    def column(name: str) -> np.ndarray:
        return features[:, FEATURES.index(name)] > 0

    repeat, goal_object, goal_target = column("repeat"), column("object_in_goal"), column("target_in_goal")
    holding = bool(column("holding")[valid].any())
    fresh = [int(s) for s in valid if not repeat[s]]
    stages = [
        [s for s in fresh if goal_object[s] and column("verb_move")[s] and goal_target[s]],
        [s for s in fresh if goal_object[s] and column("verb_transform")[s] and holding],
        [s for s in fresh if goal_object[s] and column("verb_take")[s] and not holding],
        [
            s
            for s in valid
            if goal_object[s] and column("verb_go")[s] and holding and not column("revisit")[s]
        ],
        [s for s in valid if goal_object[s] and column("verb_go")[s] and holding],
        [s for s in fresh if column("verb_open_close")[s]],
        [s for s in fresh if column("verb_go")[s] and not column("revisit")[s]],
        fresh,
        [int(s) for s in valid],
    ]
    return int(rng.choice(next(stage for stage in stages if stage)))


HAND_RULES: dict[str, Callable[[np.ndarray, Any, np.random.Generator], int]] = {
    "random": _random,
    "most_sampled": _most_sampled,
    "likelihood": _argmax_feature("mean_logprob"),
    "prm": _argmax_feature("score"),
    "majority_vote": _majority_vote,
    "goal_overlap": _goal_overlap,
    "explore": _explore,
    "goal_explore": _goal_explore,
    "goal_seek": _goal_seek,
}
RANDOMISED_RULES = ("random", "explore", "goal_explore", "goal_seek")
"""Rules that draw at random: evaluated over ``random_episodes`` episodes per problem."""


def rules_for(task: str, meta: dict[str, Any]) -> list[str]:
    if task == "alfworld":  # no engine: no log-probs, no samples to vote, no scorer
        return ["random", "most_sampled", "goal_overlap", "explore", "goal_explore", "goal_seek"]
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
    successes, returns, per_problem = [], [], []
    if not problem_ids:  # e.g. --train-eval-problems 0: nothing to play
        return {"success": float("nan"), "return": float("nan"), "episodes": 0, "per_problem": []}
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
        per_problem.append(float(np.mean(successes[-episodes:])))
    return {
        "success": float(np.mean(successes)),
        "return": float(np.mean(returns)),
        "episodes": len(successes),
        "per_problem": per_problem,
    }


def paired_comparison(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Selector ``a`` vs ``b`` on the same problems (per-problem success, same order).

    Why paired: two selectors over the same candidates agree on most problems, so the noise of their difference is
    far below that of each rate; only the problems where they differ count. Returns the difference of the means, a
    95 % percentile-bootstrap interval over problems, the problems each one wins, and the two-sided exact sign-test
    p-value over those discordant problems (ties dropped)."""
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(x) == 0:
        return {
            "difference": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "wins": 0,
            "losses": 0,
            "sign_test_p": float("nan"),
            "problems": 0,
        }
    rng = np.random.default_rng(seed)
    means = x[rng.integers(len(x), size=(resamples, len(x)))].mean(axis=1)
    wins, losses = int((x > 0).sum()), int((x < 0).sum())
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 1.0
    return {
        "difference": float(x.mean()),
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "wins": wins,
        "losses": losses,
        "sign_test_p": float(min(1.0, 2 * tail)),
        "problems": len(x),
    }


def decision_agreement(
    env: Any,
    problem_ids: Sequence[str],
    choose: Callable[[np.ndarray, Any, np.random.Generator], int],
    rule: Callable[[np.ndarray, Any, np.random.Generator], int],
) -> dict[str, float]:
    """On ``choose``'s own episodes, the share of decision states (two or more real candidates) where ``rule``
    would take the same candidate: 1.0 means the learned selector *is* that rule on these problems."""
    from wrappers.candidate_choice import feature_matrix

    rng = np.random.default_rng(0)
    same = decisions = 0
    for problem_id in problem_ids:
        observation, _ = env.reset(options={"problem_id": problem_id})
        done = False
        while not done:
            features = feature_matrix(observation)
            action = choose(features, env, rng)
            if len(_valid_slots(features)) > 1:
                decisions += 1
                same += int(rule(features, env, rng) == action)
            observation, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return {"agreement": same / decisions if decisions else float("nan"), "decision_states": decisions}


def rule_demonstrations(
    env: Any,
    problem_ids: Sequence[str],
    choose: Callable[[np.ndarray, Any, np.random.Generator], int],
    episodes: int = 1,
    gamma: float = 0.99,
    seed: int = 0,
) -> Any:
    """The states ``choose`` visits on ``problem_ids`` (flat observations), its actions and the discounted return
    from each state on: what ``agents.demonstrations.clone_into`` fits."""
    from agents.demonstrations import Demonstrations, discounted_returns
    from wrappers.candidate_choice import feature_matrix

    rng = np.random.default_rng(seed)
    observations: list[np.ndarray] = []
    actions: list[int] = []
    returns: list[float] = []
    for problem_id in problem_ids:
        for _ in range(episodes):
            observation, _ = env.reset(options={"problem_id": problem_id})
            rewards: list[float] = []
            done = False
            while not done:
                action = choose(feature_matrix(observation), env, rng)
                observations.append(np.asarray(observation, dtype=np.float32).ravel())
                actions.append(action)
                observation, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                done = terminated or truncated
            returns += discounted_returns(rewards, gamma)
    return Demonstrations(np.stack(observations), np.asarray(actions), np.asarray(returns))


def _replay(env: Any, problem_id: str, prefix: tuple[int, ...]) -> tuple[np.ndarray | None, bool]:
    """Play ``prefix`` from the problem's start: (the features reached, None if the episode ended; its success)."""
    from wrappers.candidate_choice import feature_matrix

    observation, _ = env.reset(options={"problem_id": problem_id})
    for action in prefix:
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return None, bool(info.get("is_success", False))
    return feature_matrix(observation), False


def _solvable(env: Any, problem_id: str, prefix: tuple[int, ...], memo: dict[tuple[int, ...], bool]) -> bool:
    """Whether some path after ``prefix`` solves the problem (every child is visited, so ``memo`` holds the tree)."""
    if prefix not in memo:
        rows, success = _replay(env, problem_id, prefix)
        if rows is not None:
            children = [_solvable(env, problem_id, (*prefix, int(slot)), memo) for slot in _valid_slots(rows)]
            success = any(children)
        memo[prefix] = success
    return memo[prefix]


def within_state_ranking(
    env: Any,
    problem_ids: Sequence[str],
    features: Sequence[str] = ("share", "mean_logprob", "agreement", "score"),
) -> dict[str, Any]:
    """How well each feature orders the candidates of one state: over every state that holds both a candidate from
    which some path solves the problem ("right") and one from which none does ("wrong"), the share of such pairs
    the feature ranks right first (ties count half). Also the ceiling (problems some path solves).

    Why: a selector reads these features only; when the best of them orders the pairs well and the rest add nothing,
    no selector over them can beat the rule built on that feature. Walks each problem's cached tree by replaying
    action prefixes (cheap: the view runs from the cache)."""
    from wrappers.candidate_choice import FEATURES

    right_first = {name: 0.0 for name in features}
    pairs = solved = 0
    for problem_id in problem_ids:
        memo: dict[tuple[int, ...], bool] = {}
        solved += _solvable(env, problem_id, (), memo)
        for prefix in sorted(memo, key=len):
            rows, _ = _replay(env, problem_id, prefix)
            if rows is None:
                continue
            slots = [int(slot) for slot in _valid_slots(rows)]
            good = [slot for slot in slots if memo[(*prefix, slot)]]
            bad = [slot for slot in slots if not memo[(*prefix, slot)]]
            for right, wrong in ((r, w) for r in good for w in bad):
                pairs += 1
                for name in features:
                    column = FEATURES.index(name)
                    difference = rows[right, column] - rows[wrong, column]
                    right_first[name] += 1.0 if difference > 0 else 0.5 if difference == 0 else 0.0
    return {
        "pairs": pairs,
        "ceiling": solved / max(1, len(problem_ids)),
        "pair_accuracy": {
            name: (value / pairs if pairs else float("nan")) for name, value in right_first.items()
        },
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
    if config.policy == "slot":
        from agents.slot_policy import SlotQPolicy, SlotScorerPolicy

        policy: Any = SlotQPolicy if config.algo == "dqn" else SlotScorerPolicy
    else:
        policy = "MlpPolicy"
    if config.algo == "ppo":
        batch = min(256, config.ppo_n_steps * config.n_envs)
        model = PPO(
            policy,
            env,
            n_steps=config.ppo_n_steps,
            batch_size=batch,
            n_epochs=10,
            ent_coef=0.01,
            **common,
        )
    elif config.algo == "a2c":
        model = A2C(policy, env, n_steps=8, ent_coef=0.01, **common)
    else:
        model = DQN(
            policy,
            env,
            learning_starts=500,
            buffer_size=config.total_timesteps,
            exploration_fraction=0.3,
            target_update_interval=500,
            train_freq=4,
            exploration_initial_eps=1.0 if config.warm_start == "none" else config.warm_start_exploration,
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


def validation_split(problem_ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(fit, validation): a fixed shuffle of the training problems (seed 0), the same for every algo and seed."""
    ids = list(problem_ids)
    count = int(round(fraction * len(ids)))
    if fraction <= 0 or count == 0:
        return ids, []
    if count >= len(ids):
        raise ValueError(f"validation_fraction {fraction} leaves no training problem of {len(ids)}")
    order = np.random.default_rng(0).permutation(len(ids))
    validation = [ids[i] for i in sorted(order[:count])]
    return [i for i in ids if i not in set(validation)], validation


def _selector(
    model: Any, deterministic: bool = True
) -> Callable[[np.ndarray, Any, np.random.Generator], int]:
    """The SB3 policy as a selector: its argmax (SB3's ``deterministic=True``), or a draw from its action
    distribution with the evaluation's ``rng`` (reproducible, unlike ``predict(deterministic=False)``, which draws
    from torch's global generator)."""
    if deterministic:

        def learned(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
            action, _ = model.predict(features.ravel(), deterministic=True)
            return int(action)

        return learned
    from stable_baselines3.common.policies import ActorCriticPolicy

    if not isinstance(model.policy, ActorCriticPolicy):
        raise ValueError(f"a sampled selector needs an action distribution; {type(model).__name__} has none")

    def sampled(features: np.ndarray, env: Any, rng: np.random.Generator) -> int:
        import torch

        observation, _ = model.policy.obs_to_tensor(features.ravel())
        with torch.no_grad():
            probs = model.policy.get_distribution(observation).distribution.probs[0].double().cpu().numpy()
        return int(rng.choice(len(probs), p=probs / probs.sum()))

    return sampled


def make_validation_callback(
    model_env: Any, problem_ids: Sequence[str], every: int, deterministic: bool = True, episodes: int = 1
) -> Any:
    """An SB3 callback: at the start, every ``every`` env steps and at the end the selector (deterministic, or sampled
    over ``episodes`` episodes a problem) plays the validation problems; the weights with the best success (then
    return; the earliest on ties) are kept and restored."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ValidationCheckpoint(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, float]] = []
            self.best: tuple[float, float] | None = None
            self.best_steps = 0
            self.best_state: dict[str, Any] | None = None
            self._next = every

        def _validate(self) -> None:
            result = evaluate_selector(model_env, problem_ids, _selector(self.model, deterministic), episodes)
            self.curve.append({"steps": self.num_timesteps, **result})
            self.logger.record("eval/validation_success", result["success"])
            rank = (result["success"], result["return"])
            if self.best is None or rank > self.best:
                self.best, self.best_steps = rank, self.num_timesteps
                self.best_state = copy.deepcopy(self.model.policy.state_dict())

        def _on_training_start(self) -> None:
            self._validate()  # the initial weights are a candidate too (after a warm start: the cloned rule)

        def _on_step(self) -> bool:
            if self.num_timesteps >= self._next:
                self._next += every
                self._validate()
            return True

        def _on_training_end(self) -> None:
            if not self.curve or self.curve[-1]["steps"] != self.num_timesteps:
                self._validate()
            if self.best_state is not None:
                self.model.policy.load_state_dict(self.best_state)

    return ValidationCheckpoint()


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
    fit_ids, validation_ids = validation_split(train_ids, config.validation_fraction)
    results: dict[str, Any] = {
        "rules": {},
        "rules_on_training_problems": {},
        "learned": [],
        "fit_problems": fit_ids,
        "validation_problems": validation_ids,
    }
    train_env = make_train_env(make_train, train_ids)
    train_eval_ids = list(train_ids)[: config.train_eval_problems]
    for rule in rules_for(config.task, meta):
        episodes = config.random_episodes if rule in RANDOMISED_RULES else 1
        results["rules"][rule] = evaluate_selector(test_env, test_ids, HAND_RULES[rule], episodes)
        on_train = evaluate_selector(train_env, train_eval_ids, HAND_RULES[rule], episodes)
        results["rules_on_training_problems"][rule] = on_train
        print(
            f"  {rule:>14}: held-out success {results['rules'][rule]['success']:.3f}, "
            f"training problems {on_train['success']:.3f}"
        )
    if config.task == "arithmetic":
        for name, env, ids in (("training", train_env, train_ids), ("held_out", test_env, test_ids)):
            ranking = within_state_ranking(env, ids)
            results[f"within_state_ranking_{name}"] = ranking
            accuracy = ", ".join(f"{key} {value:.3f}" for key, value in ranking["pair_accuracy"].items())
            print(
                f"  {name} problems: ceiling {ranking['ceiling']:.3f}; within-state (right, wrong) pairs "
                f"{ranking['pairs']}, ordered right by {accuracy}"
            )
    reference, best_held_out = reference_rules(results)
    results["reference_rule"], results["best_held_out_rule"] = reference, best_held_out
    print(f"  reference rule (best on the training problems): {reference}; best on held-out: {best_held_out}")
    demonstrations, demonstrator = None, warm_start_rule(config, reference)
    if demonstrator is not None:
        episodes = config.random_episodes if demonstrator in RANDOMISED_RULES else 1
        demonstrations = rule_demonstrations(train_env, fit_ids, HAND_RULES[demonstrator], episodes)
        results["warm_start"] = {"rule": demonstrator, "states": len(demonstrations.actions)}
        print(
            f"  warm start: cloning {demonstrator} on {len(demonstrations.actions)} states of the fit problems"
        )
    learned_episodes = 1 if config.deterministic else config.random_episodes
    for seed in config.seeds:
        torch.manual_seed(seed)
        log_dir = out / f"{config.task}_{run_name(config)}_s{seed}"
        env = vector_env(config, make_train, fit_ids, seed)
        model = make_model(config, env, seed, log_dir)
        clone = None
        if demonstrations is not None:
            from agents.demonstrations import clone_into

            clone = clone_into(model, demonstrations, epochs=config.clone_epochs, seed=seed)
            print(
                f"  {config.algo} seed {seed}: clone takes the demonstrator's action in {clone['agreement']:.3f} "
                f"of its states (action loss {clone['action_loss']:.3f})"
            )
        callback = None
        if validation_ids:
            callback = make_validation_callback(
                train_env, validation_ids, config.eval_every, config.deterministic, learned_episodes
            )
        started = time.perf_counter()
        model.learn(total_timesteps=config.total_timesteps, callback=callback)
        seconds = time.perf_counter() - started
        env.close()
        model.save(str(log_dir / "model"))
        learned = _selector(model, config.deterministic)
        row = {
            "seed": seed,
            "train_seconds": seconds,
            "train_fps": config.total_timesteps / seconds,
            "chosen_steps": callback.best_steps if callback else config.total_timesteps,
            "clone": clone,
            "validation_curve": callback.curve if callback else [],
            "held_out": evaluate_selector(test_env, test_ids, learned, learned_episodes),
            "train_problems": evaluate_selector(train_env, train_eval_ids, learned, learned_episodes),
        }
        for name, rule in (("reference", reference), ("best_held_out", best_held_out)):
            if rule is not None:
                row[f"vs_{name}"] = paired_comparison(
                    row["held_out"]["per_problem"], results["rules"][rule]["per_problem"]
                )
        if reference is not None and reference not in RANDOMISED_RULES and config.deterministic:
            row["agreement_with_reference"] = decision_agreement(
                test_env, test_ids, learned, HAND_RULES[reference]
            )
        results["learned"].append(row)
        print(
            f"  {config.algo} seed {seed}: held-out success {row['held_out']['success']:.3f}, "
            f"training problems {row['train_problems']['success']:.3f}, checkpoint at {row['chosen_steps']} "
            f"steps (validation {max((p['success'] for p in row['validation_curve']), default=float('nan')):.3f}), "
            f"{row['train_fps']:.0f} steps/s"
        )
        if "vs_reference" in row:
            print(f"    vs {reference}: {_paired_text(row['vs_reference'])}")
        if "agreement_with_reference" in row:
            agreement = row["agreement_with_reference"]
            print(
                f"    same choice as {reference} in {agreement['agreement']:.3f} of "
                f"{agreement['decision_states']} held-out decision states"
            )
    test_env.close()
    train_env.close()
    return results


def reference_rules(results: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the rule best on the training problems, the rule best on the held-out problems); ties go to the earlier rule.

    The first is the comparison chosen without the held-out problems (a rule has no parameters, so every training
    problem may pick it); the second is the optimistic one a reader would pick after seeing the held-out results."""

    def best(table: dict[str, dict[str, Any]]) -> str | None:
        scored = [(rule, row["success"]) for rule, row in table.items() if row.get("episodes")]
        return max(scored, key=lambda item: item[1])[0] if scored else None

    return best(results["rules_on_training_problems"]), best(results["rules"])


def _paired_text(paired: dict[str, float]) -> str:
    return (
        f"difference {paired['difference']:+.3f} (95% CI {paired['ci_low']:+.3f} to {paired['ci_high']:+.3f}), "
        f"wins {paired['wins']} / losses {paired['losses']} of {paired['problems']} problems, "
        f"sign test p = {paired['sign_test_p']:.2f}"
    )


def run_name(config: TrainSB3Config) -> str:
    """``ppo`` for the slot-scorer policy, ``ppo-mlp`` for SB3's MlpPolicy, ``+clone`` after a warm start,
    ``-sampled`` for a sampled selector (file and plot names)."""
    name = config.algo if config.policy == "slot" else f"{config.algo}-mlp"
    name = name if config.warm_start == "none" else f"{name}+clone"
    return name if config.deterministic else f"{name}-sampled"


def warm_start_rule(config: TrainSB3Config, reference: str | None) -> str | None:
    """The rule a warm start clones (None: no warm start)."""
    if config.warm_start == "none":
        return None
    rule = reference if config.warm_start == "reference" else config.warm_start
    if rule not in HAND_RULES:
        raise ValueError(
            f"warm_start {config.warm_start!r}: choose none, reference or one of {sorted(HAND_RULES)}"
        )
    return rule


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


def plot_validation(out_dir: Path, task: str) -> Path | None:
    """Validation success against training steps, one line per algo and seed (the early-stopping curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        p.stem.split("_", 1)[1]: json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{task}_*.json"))
    }
    curves = [
        (name, row)
        for name, run in runs.items()
        for row in run["results"]["learned"]
        if row.get("validation_curve")
    ]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = dict(zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for name, row in curves:
        steps = [point["steps"] for point in row["validation_curve"]]
        success = [point["success"] for point in row["validation_curve"]]
        style = "-" if row["seed"] == 0 else "--"
        ax.plot(steps, success, style, color=colors[name], label=f"{name} s{row['seed']}")
        ax.scatter([row["chosen_steps"]], [max(success)], color=colors[name], zorder=3, s=18)
    ax.set_xlabel("training env steps")
    ax.set_ylabel("validation success (training-problem split)")
    ax.set_title(f"{task}: validation curves (dots: kept checkpoint)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / f"{task}_validation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(out_dir: Path, task: str) -> str:
    """A markdown table of every run in ``out_dir``: the rules, then each learned selector and seed, with its paired
    difference from the reference rule (the rule best on the training problems)."""
    runs = {
        p.stem.split("_", 1)[1]: json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{task}_*.json"))
    }
    if not runs:
        raise FileNotFoundError(f"no {task}_*.json in {out_dir}")
    first = next(iter(runs.values()))["results"]
    reference = first.get("reference_rule")
    held_out = len(next(iter(runs.values()))["test_problems"])
    lines = [
        f"| selector | held-out ({held_out}) | training problems | kept checkpoint (validation) "
        f"| minus {reference} on held-out, paired (95% CI; wins/losses) | same choice as {reference} |",
        "|---|---|---|---|---|---|",
    ]

    def rate(row: dict[str, Any]) -> str:
        return f"{row['success']:.3f}" if row.get("episodes") else "-"

    for rule, row in first["rules"].items():
        mark = " (reference)" if rule == reference else ""
        train = first["rules_on_training_problems"].get(rule, {})
        lines.append(f"| {rule}{mark} | {rate(row)} | {rate(train)} | | | |")
    for name, run in runs.items():
        for row in run["results"]["learned"]:
            best = max((point["success"] for point in row["validation_curve"]), default=float("nan"))
            paired = row.get("vs_reference")
            versus = (
                f"{paired['difference']:+.3f} ({paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}; "
                f"{paired['wins']}/{paired['losses']})"
                if paired
                else ""
            )
            agreement = row.get("agreement_with_reference")
            same = f"{agreement['agreement']:.3f}" if agreement else ""
            lines.append(
                f"| {name} seed {row['seed']} | {rate(row['held_out'])} | {rate(row['train_problems'])} "
                f"| {row['chosen_steps']:,} ({best:.3f}) | {versus} | {same} |"
            )
    return "\n".join(lines)


def main(config: TrainSB3Config) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.threads)
    if config.warm_start not in ("none", "reference", *HAND_RULES):
        raise ValueError(
            f"warm_start {config.warm_start!r}: choose none, reference or one of {sorted(HAND_RULES)}"
        )
    if not config.deterministic and config.algo == "dqn":
        raise ValueError(
            "--no-deterministic samples from the policy's action distribution; DQN has none (use ppo or a2c)"
        )
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.summary_only:
        print(summary_table(out, config.task))
        return {}
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
        "collect_summary": meta.get("summaries") or meta.get("summary"),
        "env_steps_per_second": speed,
        "train_problems": list(train_ids),
        "test_problems": list(test_ids),
        "results": results,
    }
    path = out / f"{config.task}_{run_name(config)}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}, {plot(out, config.task)} and {plot_validation(out, config.task)}")
    print(summary_table(out, config.task))
    return report


if __name__ == "__main__":
    main(tyro.cli(TrainSB3Config))
