"""``wrappers.CandidateChoice``: both env checkers on the real Arithmetic env with a real (tiny) engine, feature
semantics on hand-made candidates, the candidate cache, SB3's vector envs and a short PPO run that learns."""

from __future__ import annotations

import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

import reasoning_gym  # noqa: F401  (registers the ids)
from agents.engines import Completion
from reasoning_gym.arithmetic import generate_problem
from wrappers import CandidateChoice
from wrappers.candidate_choice import (
    FEATURES,
    Candidate,
    CandidateCache,
    candidate_features,
    feature_matrix,
    state_key,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COL = {name: i for i, name in enumerate(FEATURES)}


def arithmetic(level: int = 2, steps: int = 2) -> gym.Env:
    return gym.make("openr/Arithmetic-v0", level=level, max_episode_steps=steps)


class FakeStepEngine:
    """A stand-in engine that returns scripted samples (by number of steps so far), so the features can be checked
    against hand-computed values. The real engine runs in ``test_env_checkers_with_a_real_tiny_engine``."""

    step_delimiter = "\n\n"
    tokenizer = None

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script
        self.calls = 0

    def step_prompt(self, question, steps, instruction=""):
        return f"{question}|{len(steps)}"

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, stop=None, seed=None):
        self.calls += 1
        groups = []
        for prompt in prompts:
            texts = self.script[int(prompt.rsplit("|", 1)[1])]
            assert len(texts) == n
            groups.append(
                [
                    Completion(t, token_ids=[1] * 4, logprobs=[-0.1 * (1 + i)] * 4, finish_reason="stop")
                    for i, t in enumerate(texts)
                ]
            )
        return groups

    def score(self, prompts, continuations):
        raise AssertionError("not used for sampled candidates")


SCRIPT = {
    0: [
        "3 + 4 = 7",
        "3 + 4 = 7",
        "3 + 4 = 8",
        "4 + 3 = 7",
        "3 + 4 = 7",
        "3 + 4 = 8",
        "The answer is \\boxed{7}.",
        "The answer is \\boxed{7}.",
    ],
    1: ["The answer is \\boxed{7}."] * 8,
}


def test_features_merge_duplicates_and_measure_agreement():
    engine = FakeStepEngine(SCRIPT)
    env = CandidateChoice(arithmetic(), engine, k=8, max_new_tokens=8)
    observation, info = env.reset(options={"problem_id": "L1-0"})
    features = feature_matrix(observation)
    assert observation.shape == (8 * len(FEATURES),) and observation.dtype == np.float32
    assert env.observation_space.contains(observation)
    # Four distinct texts, ordered by how many of the 8 samples produced them.
    assert info["candidates"] == ["3 + 4 = 7", "3 + 4 = 8", "The answer is \\boxed{7}.", "4 + 3 = 7"]
    np.testing.assert_allclose(features[:, COL["valid"]], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(features[:4, COL["share"]], [3 / 8, 2 / 8, 2 / 8, 1 / 8])
    # Results: 7 (last number), 8, 7 (final answer), 7: six of the eight samples say 7.
    np.testing.assert_allclose(features[:4, COL["agreement"]], [6 / 8, 2 / 8, 6 / 8, 6 / 8])
    np.testing.assert_allclose(features[:4, COL["has_answer"]], [0, 0, 1, 0])
    np.testing.assert_allclose(features[:4, COL["mean_logprob"]], [-0.1, -0.3, -0.7, -0.4], rtol=1e-5)
    np.testing.assert_allclose(features[:4, COL["length"]], [0.5] * 4)
    assert np.all(features[4:] == 0)  # padding rows
    assert engine.calls == 1  # one batched call per state

    # A padding slot takes slot 0 and says so; the view steps the real env with the chosen text.
    observation, reward, terminated, truncated, info = env.step(6)
    assert info["invalid_choice"] and info["choice"] == "3 + 4 = 7" and info["steps"] == ["3 + 4 = 7"]
    assert not terminated and reward == 0.0
    features = feature_matrix(observation)
    assert features[0, COL["step_index"]] == pytest.approx(0.5)
    assert info["candidates"] == ["The answer is \\boxed{7}."]

    # L1-0's answer is 6, so the env's own verdict says wrong; the observation after the end is all zeros.
    observation, reward, terminated, truncated, info = env.step(0)
    assert terminated and reward == 0.0 and info["is_success"] is False and not observation.any()
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match="slot"):
        env.step(8)


class FakeResultPRM:
    """A stand-in scorer (``score(questions, step_lists)``) that likes steps ending in 7; counts its calls.
    Real transformer PRMs are tested in test_prm.py."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, questions, step_lists):
        self.calls += 1
        return [
            [0.5] * (len(steps) - 1) + [0.9 if steps[-1].rstrip(".}").endswith("7") else 0.2]
            for steps in step_lists
        ]


def test_scorer_fills_the_score_feature_in_one_call():
    scorer = FakeResultPRM()
    env = CandidateChoice(arithmetic(), FakeStepEngine(SCRIPT), k=8, max_new_tokens=8, scorer=scorer)
    observation, info = env.reset(options={"problem_id": "L1-0"})
    scores = feature_matrix(observation)[:4, COL["score"]]
    np.testing.assert_allclose(scores, [0.9, 0.2, 0.9, 0.9], rtol=1e-6)
    assert scorer.calls == 1  # every candidate of the state in one batched call
    assert all(c.score is not None for c in env.candidates)


def test_repeat_and_goal_overlap_features():
    candidates = [Candidate("go to fridge 1", share=0.5), Candidate("look", share=0.5)]
    features = candidate_features(
        candidates,
        k=3,
        max_new_tokens=8,
        question="put a potato in fridge.",
        steps=["look"],
        step_fraction=0.25,
    )
    np.testing.assert_allclose(features[:2, COL["goal_overlap"]], [1 / 4, 0])
    np.testing.assert_allclose(features[:2, COL["repeat"]], [0, 1])
    np.testing.assert_allclose(features[:2, COL["step_index"]], [0.25, 0.25])
    assert features[2].sum() == 0


def test_text_game_command_features():
    candidates = [
        Candidate("go to fridge 1"),
        Candidate("go to cabinet 2"),
        Candidate("take apple 1 from countertop 1"),
        Candidate("move apple 1 to fridge 1"),
        Candidate("heat apple 1 with microwave 1"),
        Candidate("examine fridge 1"),
        Candidate("open fridge 1"),
    ]
    steps = ["go to countertop 1", "go to fridge 1", "look"]
    features = candidate_features(candidates, k=8, max_new_tokens=8, steps=steps, text_game=True)
    np.testing.assert_allclose(features[:7, COL["revisit"]], [1, 0, 0, 0, 0, 0, 0])
    verbs = ["verb_go", "verb_take", "verb_move", "verb_open_close", "verb_transform", "verb_inspect"]
    one_hot = features[:7][:, [COL[v] for v in verbs]]
    np.testing.assert_allclose(one_hot.argmax(axis=1), [0, 0, 1, 2, 4, 5, 3])
    np.testing.assert_allclose(one_hot.sum(axis=1), 1)
    # Goal "heat some apple and put it in fridge": the apple is the object, the fridge the target.
    goal = candidate_features(
        candidates, k=8, max_new_tokens=8, question="heat some apple and put it in fridge.", text_game=True
    )
    np.testing.assert_allclose(goal[:7, COL["object_in_goal"]], [1, 0, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(goal[:7, COL["target_in_goal"]], [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(goal[:, COL["holding"]], [1] * 7 + [0])  # a move command is listed: carrying
    empty_handed = candidate_features(candidates[:3], k=4, max_new_tokens=8, question="x", text_game=True)
    assert empty_handed[:, COL["holding"]].sum() == 0
    # Math steps never get command features, even when a step starts with a verb.
    math = candidate_features([Candidate("take 3 + 4 = 7")], k=2, max_new_tokens=8, steps=["take 1"])
    assert (
        math[0, [COL[v] for v in [*verbs, "revisit", "object_in_goal", "target_in_goal", "holding"]]].sum()
        == 0
    )


def test_goal_seeking_rule_follows_the_plan():
    """Take the goal's object, carry it to the goal's place (even one visited before), put it there."""
    from experiments.train_sb3 import HAND_RULES

    goal, rng = "put some apple on fridge.", np.random.default_rng(0)

    def choice(texts, steps):
        features = candidate_features(
            [Candidate(t) for t in texts], k=8, max_new_tokens=8, question=goal, steps=steps, text_game=True
        )
        return {texts[HAND_RULES["goal_seek"](features, None, rng)] for _ in range(20)}

    start = ["go to fridge 1", "go to countertop 1", "go to cabinet 1", "look"]
    assert choice(start, ["go to fridge 1"]) == {
        "go to countertop 1",
        "go to cabinet 1",
    }  # explore new places
    here = ["take apple 1 from countertop 1", "take mug 1 from countertop 1", "go to fridge 1", "look"]
    assert choice(here, ["go to countertop 1"]) == {"take apple 1 from countertop 1"}
    carrying = ["move apple 1 to countertop 1", "go to fridge 1", "go to cabinet 1", "look"]
    assert choice(carrying, ["go to fridge 1", "go to countertop 1", "take apple 1 from countertop 1"]) == {
        "go to fridge 1"
    }
    there = ["move apple 1 to fridge 1", "go to countertop 1", "look"]
    assert choice(there, ["go to fridge 1", "take apple 1 from countertop 1"]) == {"move apple 1 to fridge 1"}


def test_exploring_rules_skip_taken_commands_and_visited_places():
    from experiments.train_sb3 import HAND_RULES

    candidates = [
        Candidate("go to fridge 1"),  # revisit
        Candidate("look"),  # repeat
        Candidate("go to sinkbasin 1"),  # fresh
        Candidate("take apple 1 from countertop 1"),  # fresh, one goal word
    ]
    features = candidate_features(
        candidates,
        k=6,
        max_new_tokens=8,
        question="put a clean apple in fridge",
        steps=["go to fridge 1", "look"],
        text_game=True,
    )
    rng = np.random.default_rng(0)
    explored = {HAND_RULES["explore"](features, None, rng) for _ in range(40)}
    assert explored == {2, 3}
    assert {HAND_RULES["goal_explore"](features, None, rng) for _ in range(10)} == {3}


def test_env_checkers_with_a_real_tiny_engine():
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model

    model, tokenizer = tiny_model(num_layers=1, hidden_size=64)
    engine = HFEngine(model, tokenizer, num_threads=1)
    env = CandidateChoice(arithmetic(), engine, k=2, max_new_tokens=4, temperature=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # gymnasium's "use env.unwrapped" hint: the wrapper is what is checked
        sb3_check_env(env, warn=True)
        gym_check_env(env)
    observation, info = env.reset(seed=3)
    assert env.observation_space.contains(observation)
    assert 1 <= len(info["candidates"]) <= 2
    # Same seed, same state: the same candidates (from the cache the view keeps), so runs are reproducible.
    again, info_again = env.reset(seed=3)
    assert info_again["candidates"] == info["candidates"] and np.array_equal(again, observation)


def test_cache_round_trip_runs_without_engine(tmp_path):
    from experiments.collect_candidates import CollectConfig, collect

    engine = FakeStepEngine(SCRIPT)
    path = tmp_path / "cache.jsonl"
    config = CollectConfig(problems=3, k=8, max_new_tokens=8, max_episode_steps=2, out=str(path))
    summary = collect(config, engine, progress=False)
    # 3 roots, and each root's non-answer children (3 + 4 = 7, 3 + 4 = 8, 4 + 3 = 7) one level down.
    assert summary["states"] == 3 + 3 * 3 and engine.calls == 2

    cache = CandidateCache.load(path)
    assert len(cache) == 12 and len(cache.problem_ids()) == 3
    env = CandidateChoice.from_cache(arithmetic(steps=2), path)
    assert env.k == 8 and sorted(env.problem_ids) == sorted(cache.problem_ids())
    for seed in range(6):
        observation, info = env.reset(seed=seed)
        assert info["candidates"] == [c.text for c in cache.get(state_key(info))]
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
    with pytest.raises(KeyError, match="not in the candidate cache"):
        env.reset(options={"problem_id": "L2-999999"})
    with pytest.raises(ValueError, match="cache was made with"):
        CandidateChoice(arithmetic(), None, cache=cache, k=4)
    with pytest.raises(ValueError, match="engine or a candidate cache"):
        CandidateChoice(arithmetic(), None)


def hand_made_cache(problem_ids: list[str]) -> CandidateCache:
    """Per problem: a wrong final answer sampled most (slot 0) and the right one less often but more likely."""
    cache = CandidateCache(
        {"k": 4, "candidates": "sampled", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}
    )
    for problem_id in problem_ids:
        answer = int(generate_problem(2, int(problem_id.split("-")[1])).answer)
        wrong = Candidate(
            f"The answer is \\boxed{{{answer + 1}}}.", share=0.75, mean_logprob=-0.9, num_tokens=6
        )
        right = Candidate(f"The answer is \\boxed{{{answer}}}.", share=0.25, mean_logprob=-0.2, num_tokens=6)
        cache.put((problem_id, ()), [wrong, right])
    return cache


def test_sb3_vector_envs_over_a_cache():
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    cache = hand_made_cache([f"L2-{i}" for i in range(4)])

    def make():
        return CandidateChoice.from_cache(arithmetic(), cache)

    for vec in (DummyVecEnv([make, make]), SubprocVecEnv([make, make], start_method="fork")):
        vec.seed(0)
        observations = vec.reset()
        assert observations.shape == (2, 4 * len(FEATURES))
        observations, rewards, dones, infos = vec.step(np.array([1, 0]))
        assert list(rewards) == [1.0, 0.0] and all(dones)  # one-step episodes: right, then wrong
        assert infos[0]["is_success"] and not infos[1]["is_success"]
        assert "terminal_observation" in infos[0]
        vec.close()


def test_ppo_learns_to_pick_the_right_candidate():
    from stable_baselines3 import PPO

    from experiments.train_sb3 import HAND_RULES, evaluate_selector

    train_ids, test_ids = [f"L2-{i}" for i in range(16)], [f"L2-{i}" for i in range(100, 108)]
    cache = hand_made_cache(train_ids + test_ids)
    env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=train_ids)
    test_env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=test_ids)
    random_rate = evaluate_selector(test_env, test_ids, HAND_RULES["random"], episodes=8)["success"]
    most_sampled = evaluate_selector(test_env, test_ids, HAND_RULES["most_sampled"])["success"]
    assert 0.2 < random_rate < 0.8 and most_sampled == 0.0
    assert evaluate_selector(test_env, test_ids, HAND_RULES["likelihood"])["success"] == 1.0
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, learning_rate=3e-3, seed=0, device="cpu")
    model.learn(total_timesteps=1024)

    def learned(features, env, rng):
        return int(model.predict(features.ravel(), deterministic=True)[0])

    assert evaluate_selector(test_env, test_ids, learned)["success"] == 1.0


@pytest.mark.alfworld
def test_admissible_commands_without_engine():
    pytest.importorskip("alfworld")
    inner = gym.make(
        "openr/ALFWorld-v0",
        num_games=2,
        task_types=["pick_and_place_simple"],
        source="generated",
        max_episode_steps=4,
    )
    env = CandidateChoice(inner, None, k=64, candidates="admissible")
    observation, info = env.reset(seed=0)
    features = feature_matrix(observation)
    assert int(features[:, COL["valid"]].sum()) == len(set(info["admissible_commands"]))
    assert set(info["candidates"]) == set(info["admissible_commands"])
    np.testing.assert_allclose(features[: len(info["candidates"]), COL["mean_logprob"]], 0.0)
    slot = info["candidates"].index("look")
    observation, reward, terminated, truncated, info = env.step(slot)
    assert info["choice"] == "look" and not info["invalid"]
    assert feature_matrix(observation)[info["candidates"].index("look"), COL["repeat"]] == 1.0
    first, second = [c for c in info["candidates"] if c.startswith("go to ")][:2]
    observation, *_, info = env.step(info["candidates"].index(first))
    observation, *_, info = env.step(info["candidates"].index(second))
    features = feature_matrix(observation)
    assert features[info["candidates"].index(first), COL["revisit"]] == 1.0  # back to a place already seen
    assert features[info["candidates"].index(first), COL["verb_go"]] == 1.0
    assert features[:, COL["revisit"]].sum() == 1.0
    env.close()


def test_slot_scorer_is_permutation_equivariant_and_masks_padding():
    import torch
    from gymnasium import spaces

    from agents.slot_policy import SlotQPolicy, SlotScorerPolicy

    k, width = 4, len(FEATURES)
    observation_space = spaces.Box(-20.0, 1.0, (k * width,), np.float32)
    observations = torch.rand(3, k, width)
    observations[..., COL["valid"]] = 1.0
    observations[0, 3] = 0.0  # a padding slot
    flat = observations.reshape(3, -1)
    permuted = observations[:, [2, 0, 1, 3]].reshape(3, -1)
    policy = SlotScorerPolicy(observation_space, spaces.Discrete(k), lambda _: 3e-4)
    probs = policy.get_distribution(flat).distribution.probs
    assert probs[0, 3] == 0.0 and torch.allclose(probs.sum(-1), torch.ones(3))
    torch.testing.assert_close(policy.get_distribution(permuted).distribution.probs, probs[:, [2, 0, 1, 3]])
    torch.testing.assert_close(policy.predict_values(permuted), policy.predict_values(flat))
    q_net = SlotQPolicy(observation_space, spaces.Discrete(k), lambda _: 3e-4).q_net
    q_values = q_net(flat)
    assert q_values[0, 3] < -1e7 and torch.all(q_values[:, :3] > -1e7)
    torch.testing.assert_close(q_net(permuted), q_values[:, [2, 0, 1, 3]])
    # The all-zero observation after an episode's end: finite values to bootstrap from.
    assert torch.equal(q_net(torch.zeros(1, k * width)), torch.zeros(1, k))


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_slot_policies_learn_and_early_stopping_keeps_the_best_checkpoint(algo, tmp_path):
    from stable_baselines3 import DQN, PPO

    from agents.slot_policy import SlotQPolicy, SlotScorerPolicy
    from experiments.train_sb3 import _selector, evaluate_selector, make_validation_callback, validation_split

    train_ids, test_ids = [f"L2-{i}" for i in range(16)], [f"L2-{i}" for i in range(100, 108)]
    fit_ids, validation_ids = validation_split(train_ids, 0.25)
    assert len(validation_ids) == 4 and set(fit_ids) | set(validation_ids) == set(train_ids)
    assert validation_split(train_ids, 0.25) == (fit_ids, validation_ids)  # the same split every run
    cache = hand_made_cache(train_ids + test_ids)
    env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=fit_ids)
    validation_env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=validation_ids)
    test_env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=test_ids)
    if algo == "ppo":
        model = PPO(
            SlotScorerPolicy, env, n_steps=128, batch_size=64, learning_rate=3e-3, seed=0, device="cpu"
        )
    else:
        model = DQN(SlotQPolicy, env, learning_starts=64, exploration_fraction=0.3, seed=0, device="cpu")
    callback = make_validation_callback(validation_env, validation_ids, every=256)
    model.learn(total_timesteps=1024, callback=callback)
    assert [point["steps"] for point in callback.curve] == [0, 256, 512, 768, 1024]  # the start counts
    best = max(point["success"] for point in callback.curve)
    assert best == 1.0
    assert evaluate_selector(validation_env, validation_ids, _selector(model))["success"] == best  # restored
    assert evaluate_selector(test_env, test_ids, _selector(model))["success"] == 1.0
    model.save(tmp_path / "model")
    loaded = (PPO if algo == "ppo" else DQN).load(tmp_path / "model", device="cpu")
    assert evaluate_selector(test_env, test_ids, _selector(loaded))["success"] == 1.0


def test_sampled_selector_draws_from_the_policy_reproducibly():
    """``_selector(model, deterministic=False)`` draws slots in proportion to the policy's probabilities with the
    evaluation's generator (the same seed, the same draws); DQN, which has no distribution, is refused."""
    import torch
    from stable_baselines3 import DQN, PPO

    from agents.slot_policy import SlotQPolicy, SlotScorerPolicy
    from experiments.train_sb3 import _selector

    ids = [f"L2-{i}" for i in range(4)]
    env = CandidateChoice.from_cache(arithmetic(), hand_made_cache(ids), problem_ids=ids)
    model = PPO(SlotScorerPolicy, env, seed=0, device="cpu")
    observation, _ = env.reset(options={"problem_id": ids[0]})
    features = feature_matrix(observation)
    tensor, _ = model.policy.obs_to_tensor(observation)
    with torch.no_grad():
        probs = model.policy.get_distribution(tensor).distribution.probs[0].numpy()
    sampled = _selector(model, deterministic=False)

    def draw(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sampled(features, env, rng) for _ in range(4000)]

    draws = draw(7)
    assert draws == draw(7)
    frequencies = np.bincount(draws, minlength=len(probs)) / len(draws)
    np.testing.assert_allclose(frequencies, probs, atol=0.03)
    valid = set(np.flatnonzero(features[:, COL["valid"]] > 0).tolist())
    assert set(draws) <= valid and len(set(draws)) > 1  # every real slot can be drawn, padding never
    with pytest.raises(ValueError, match="DQN has none"):
        _selector(DQN(SlotQPolicy, env, seed=0, device="cpu"), deterministic=False)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
@pytest.mark.parametrize(("demonstrator", "held_out_success"), [("most_sampled", 0.0), ("likelihood", 1.0)])
def test_warm_start_clones_the_demonstrator_whatever_it_is(algo, demonstrator, held_out_success):
    """Cloning copies the demonstrator's choices to unseen problems, a wrong rule (slot 0) as faithfully as the right
    one, and the critic / Q-values start at the demonstrator's returns."""
    import torch
    from stable_baselines3 import A2C, DQN, PPO

    from agents.demonstrations import clone_into
    from agents.slot_policy import SlotQPolicy, SlotScorerPolicy
    from experiments.train_sb3 import HAND_RULES, _selector, evaluate_selector, rule_demonstrations

    train_ids, test_ids = [f"L2-{i}" for i in range(16)], [f"L2-{i}" for i in range(100, 108)]
    cache = hand_made_cache(train_ids + test_ids)
    env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=train_ids)
    test_env = CandidateChoice.from_cache(arithmetic(), cache, problem_ids=test_ids)
    model = {"ppo": PPO, "a2c": A2C, "dqn": DQN}[algo](
        SlotQPolicy if algo == "dqn" else SlotScorerPolicy, env, seed=0, device="cpu"
    )
    demonstrations = rule_demonstrations(env, train_ids, HAND_RULES[demonstrator])
    assert len(demonstrations.actions) == 16 and set(demonstrations.returns) == {held_out_success}
    stats = clone_into(model, demonstrations, epochs=200, learning_rate=3e-3)
    assert stats["agreement"] == 1.0
    assert evaluate_selector(test_env, test_ids, _selector(model))["success"] == held_out_success
    observations = torch.as_tensor(demonstrations.observations)
    with torch.no_grad():
        if algo == "dqn":
            values = model.q_net(observations).gather(1, torch.as_tensor(demonstrations.actions)[:, None])
        else:
            values = model.policy.predict_values(observations)
    assert torch.allclose(values.flatten(), torch.full((16,), held_out_success), atol=0.15)


def test_slot_scorer_expresses_most_sampled_exactly():
    """The hand rule the learned selectors are compared with is one setting of the shared scorer: a scorer that
    reads ``share`` (and ``mean_logprob`` to break ties, as the slot order does) picks slot 0 on every state."""
    import torch

    from agents.slot_policy import SlotScorer
    from wrappers.candidate_choice import _ordered

    scorer = SlotScorer(hidden=8)
    with torch.no_grad():
        for layer in (scorer.body[0], scorer.body[2], scorer.head):
            layer.weight.zero_()
            layer.bias.zero_()
        scorer.body[0].weight[0, COL["share"]] = 1.0
        scorer.body[0].weight[0, COL["mean_logprob"]] = 0.005  # 20 x 0.005 < 1/6, the smallest share step
        scorer.body[2].weight[0, 0] = 1.0
        scorer.head.weight[0, 0] = 1.0
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        counts = rng.multinomial(6, rng.dirichlet(np.ones(4)))
        candidates = [
            Candidate(f"step {i}", share=c / 6, mean_logprob=float(rng.uniform(-20, 0)))
            for i, c in enumerate(counts)
            if c
        ]
        rows.append(candidate_features(_ordered(candidates), k=6, max_new_tokens=8).ravel())
    scores = scorer(torch.as_tensor(np.stack(rows)))
    assert torch.all(scores.argmax(dim=-1) == 0)


def test_merged_cache_parts(tmp_path):
    first, second = hand_made_cache(["L2-1", "L2-2"]), hand_made_cache(["L2-3"])
    first.meta["summary"], second.meta["summary"] = {"states": 2}, {"states": 1}
    first.save(tmp_path / "a.jsonl")
    second.save(tmp_path / "b.jsonl")
    merged = CandidateCache.merged([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert merged.problem_ids() == ["L2-1", "L2-2", "L2-3"]
    assert merged.meta["summaries"] == [{"states": 2}, {"states": 1}]
    env = CandidateChoice.from_cache(arithmetic(), merged)
    assert sorted(env.problem_ids) == ["L2-1", "L2-2", "L2-3"]
    with pytest.raises(ValueError, match="also in an earlier part"):
        CandidateCache.merged([tmp_path / "a.jsonl", tmp_path / "a.jsonl"])
    second.meta["temperature"] = 0.7
    second.save(tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="temperature"):
        CandidateCache.merged([tmp_path / "a.jsonl", tmp_path / "c.jsonl"])


def test_paired_comparison_and_decision_agreement():
    from experiments.train_sb3 import (
        HAND_RULES,
        decision_agreement,
        evaluate_selector,
        paired_comparison,
        within_state_ranking,
    )

    # 10 problems: a wins 4, loses 1, ties 5
    a = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]
    b = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    paired = paired_comparison(a, b)
    assert paired["difference"] == pytest.approx(0.3)
    assert (paired["wins"], paired["losses"], paired["problems"]) == (4, 1, 10)
    assert paired["sign_test_p"] == pytest.approx(2 * 6 / 32)  # P(X <= 1), X ~ Bin(5, 1/2), two-sided
    assert paired["ci_low"] < 0.3 < paired["ci_high"]
    assert paired_comparison(a, a)["sign_test_p"] == 1.0

    ids = [f"L2-{i}" for i in range(6)]
    env = CandidateChoice.from_cache(arithmetic(), hand_made_cache(ids), problem_ids=ids)
    result = evaluate_selector(env, ids, HAND_RULES["likelihood"])
    assert result["per_problem"] == [1.0] * 6
    same = decision_agreement(env, ids, HAND_RULES["most_sampled"], HAND_RULES["most_sampled"])
    assert same == {"agreement": 1.0, "decision_states": 6}
    assert (
        decision_agreement(env, ids, HAND_RULES["most_sampled"], HAND_RULES["likelihood"])["agreement"] == 0.0
    )
    ranking = within_state_ranking(env, ids)  # the right answer is less sampled but more likely: known orders
    assert ranking["ceiling"] == 1.0 and ranking["pairs"] == 6
    assert ranking["pair_accuracy"]["share"] == 0.0 and ranking["pair_accuracy"]["mean_logprob"] == 1.0
    assert (
        ranking["pair_accuracy"]["agreement"] == 0.0 and ranking["pair_accuracy"]["score"] == 0.5
    )  # no scorer


def test_train_sb3_end_to_end_on_cache_parts(tmp_path, capsys):
    """The script on two hand-made training parts and a held-out cache: the reference rule is the one best on the
    training problems, every seed is compared with it problem by problem, and the summary table is printed."""
    from experiments.train_sb3 import TrainSB3Config, main

    parts = [tmp_path / "train_a.jsonl", tmp_path / "train_b.jsonl"]
    hand_made_cache([f"L2-{i}" for i in range(8)]).save(parts[0])
    hand_made_cache([f"L2-{i}" for i in range(8, 16)]).save(parts[1])
    hand_made_cache([f"L2-{i}" for i in range(100, 106)]).save(tmp_path / "test.jsonl")
    config = TrainSB3Config(
        train_cache=tuple(map(str, parts)),
        test_cache=(str(tmp_path / "test.jsonl"),),
        seeds=(0,),
        total_timesteps=512,
        eval_every=256,
        ppo_n_steps=64,
        n_envs=2,
        random_episodes=2,
        speed_steps=0,
        out_dir=str(tmp_path / "out"),
    )
    report = main(config)
    results = report["results"]
    assert len(report["train_problems"]) == 16 and len(results["validation_problems"]) == 4
    assert results["reference_rule"] == "likelihood"  # right on every training problem; most sampled never
    row = results["learned"][0]
    assert row["vs_reference"]["problems"] == 6 and "agreement" in row["agreement_with_reference"]
    assert "| likelihood (reference) | 1.000 | 1.000 |" in capsys.readouterr().out
    main(TrainSB3Config(out_dir=str(tmp_path / "out"), summary_only=True))
    assert "ppo seed 0" in capsys.readouterr().out

    # Warm start: the reference rule is cloned on the fit problems before RL, and the clone is the step-0 checkpoint.
    warm = main(replace(config, warm_start="reference", clone_epochs=200))
    row = warm["results"]["learned"][0]
    assert warm["results"]["warm_start"] == {
        "rule": "likelihood",
        "states": 12,
    }  # the 12 fit problems, one step each
    assert row["clone"]["agreement"] == 1.0 and row["validation_curve"][0]["steps"] == 0
    assert row["validation_curve"][0]["success"] == 1.0 and row["held_out"]["success"] == 1.0
    assert (tmp_path / "out" / "arithmetic_ppo+clone.json").exists()
    with pytest.raises(ValueError, match="warm_start 'nope'"):
        main(replace(config, warm_start="nope"))

    # A sampled selector plays random_episodes episodes a problem (validation and held-out), under its own name.
    sampled = main(replace(config, deterministic=False))["results"]["learned"][0]
    assert sampled["held_out"]["episodes"] == 2 * 6 and sampled["validation_curve"][0]["episodes"] == 2 * 4
    assert (tmp_path / "out" / "arithmetic_ppo-sampled.json").exists()
    with pytest.raises(ValueError, match="DQN has none"):
        main(replace(config, algo="dqn", deterministic=False))
