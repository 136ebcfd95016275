"""Search agents end to end on openr/Arithmetic-v0: a scripted engine (FakeEngine) for exact behaviour, and the
real HFEngine with a tiny random model for the smoke / determinism tests."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

import gymnasium as gym
import pytest

import agents
import reasoning_gym  # noqa: F401  (registers openr/*)
from agents.engines.base import Completion, GenerationStats
from reasoning_gym.arithmetic import generate_problem

PROBLEMS = [{"problem_id": f"L1-{seed}"} for seed in range(4)]
WRONG_STEP = "So the answer is \\boxed{-1}."


def solution_steps(question: str) -> list[str]:
    """The worked solution of the level-1 problem with this question."""
    for seed in range(200):
        problem = generate_problem(1, seed)
        if problem.question == question:
            return (problem.solution or "").split("\n\n")
    raise KeyError(question)


class FakeEngine:
    """A scripted engine: ``policy(question, steps, sample_index, rng) -> (text, per-token logprob)``.

    Prompts are JSON of (question, steps) so the policy can read them; every call is recorded.
    """

    step_delimiter = "\n\n"

    def __init__(self, policy: Callable[[str, list[str], int, random.Random], tuple[str, float]]) -> None:
        self.policy = policy
        self.stats = GenerationStats()
        self.calls: list[tuple[int, int]] = []  # (number of prompts, n)
        self.tokenizer = None

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> str:
        return json.dumps({"q": question, "steps": list(steps)})

    def count_prompt_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, stop=None, seed=None):
        rng = random.Random(seed)
        self.calls.append((len(prompts), n))
        out = []
        for prompt in prompts:
            data = json.loads(prompt)
            group = []
            for i in range(n):
                text, logprob = self.policy(data["q"], data["steps"], i, rng)
                tokens = text.split() or [""]
                group.append(
                    Completion(
                        text, list(range(len(tokens))), [logprob] * len(tokens), "stop", len(prompt.split())
                    )
                )
            out.append(group)
        self.stats.record(out)
        return out


class FakePRM:
    """Scores a step 1.0 when it is a step of the worked solution, else 0.0."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, questions, step_lists):
        self.calls += 1
        return [
            [1.0 if s in solution_steps(q) else 0.0 for s in steps] for q, steps in zip(questions, step_lists)
        ]


def perfect(question, steps, index, rng):
    return solution_steps(question)[len(steps)], -0.1


def noisy(question, steps, index, rng):
    """Right 60% of the time; wrong answers are scattered (so they cannot win a vote) and less likely."""
    if rng.random() < 0.6:
        return solution_steps(question)[len(steps)], -0.2
    return f"So the answer is \\boxed{{{rng.randint(100, 10**6)}}}.", -1.5


def first_sample_wrong(question, steps, index, rng):
    """At the first step, sample 0 is a confident wrong final answer; everything else follows the solution."""
    if index == 0 and not steps:
        return WRONG_STEP, -0.01
    return solution_steps(question)[len(steps)], -0.5


@pytest.fixture()
def env():
    environment = gym.make("openr/Arithmetic-v0", level=1)
    yield environment
    environment.close()


AGENTS = {
    "Greedy": {},
    "BestOfN": {"n": 4},
    "BeamSearch": {"beam_width": 2, "num_expansions": 2},
    "MCTS": {"num_simulations": 6, "num_expansions": 3},
}


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_solves_easy_problems_with_a_perfect_policy(env, name):
    engine = FakeEngine(perfect)
    agent = getattr(agents, name)(engine, env, **AGENTS[name])
    results = agent.solve_many(env, PROBLEMS)
    assert [r["correct"] for r in results] == [True] * len(PROBLEMS)
    for result, options in zip(results, PROBLEMS):
        assert result["problem_id"] == options["problem_id"]
        assert result["steps"] == solution_steps(generate_problem(1, int(options["problem_id"][3:])).question)
        assert result["generated_tokens"] > 0 and result["prompt_tokens"] > 0 and result["engine_calls"] > 0


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_one_engine_call_per_wave_for_all_problems(env, name):
    """Batching: the number of engine calls does not grow with the number of problems."""
    one, many = FakeEngine(perfect), FakeEngine(perfect)
    getattr(agents, name)(one, env, **AGENTS[name]).solve_many(env, PROBLEMS[:1])
    getattr(agents, name)(many, env, **AGENTS[name]).solve_many(env, PROBLEMS)
    assert len(many.calls) == len(one.calls)
    assert max(prompts for prompts, _ in many.calls) >= len(PROBLEMS)


def test_guided_agents_call_the_prm_once_per_wave(env):
    for name in ("BeamSearch", "MCTS"):
        engine, prm = FakeEngine(perfect), FakePRM()
        getattr(agents, name)(engine, env, prm=prm, **AGENTS[name]).solve_many(env, PROBLEMS)
        assert prm.calls == len(engine.calls), name


def test_majority_vote_beats_a_noisy_single_sample(env):
    engine = FakeEngine(noisy)
    problems = [{"problem_id": f"L1-{seed}"} for seed in range(12)]
    one = agents.BestOfN(engine, env, n=1, seed=3).solve_many(env, problems)
    vote = agents.BestOfN(engine, env, n=9, seed=3).solve_many(env, problems)
    assert sum(r["correct"] for r in vote) > sum(r["correct"] for r in one)
    assert sum(r["correct"] for r in vote) >= 10
    assert all(r["num_candidates"] == 9 for r in vote)


def test_prm_guidance_avoids_a_confident_wrong_step(env):
    """Without a PRM the likelihood prefers the confident wrong step; the PRM steers every agent away from it."""
    for name in ("BestOfN", "BeamSearch", "MCTS"):
        config = {**AGENTS[name], "selection": "prm_min_max"} if name == "BestOfN" else AGENTS[name]
        guided = getattr(agents, name)(FakeEngine(first_sample_wrong), env, prm=FakePRM(), **config)
        assert all(r["correct"] for r in guided.solve_many(env, PROBLEMS)), name
    unguided = agents.BeamSearch(FakeEngine(first_sample_wrong), env, beam_width=1, num_expansions=2)
    assert not any(r["correct"] for r in unguided.solve_many(env, PROBLEMS))


def test_predict_returns_the_next_step_and_restores_the_env(env):
    agent = agents.MCTS(FakeEngine(perfect), env, num_simulations=3, num_expansions=2)
    obs, info = env.reset(options={"problem_id": "L1-7"})
    state = env.unwrapped.get_state()
    action = agent.predict(obs, info)
    assert action == solution_steps(info["problem"])[0]
    assert env.unwrapped.get_state() == state


def test_solve_with_the_base_loop(env):
    """``solve`` is ``solve_many`` of one problem; same seed, same result."""
    agent = agents.BestOfN(FakeEngine(noisy), env, n=3, seed=5)
    first = agent.solve(env, options={"problem_id": "L1-11"})
    second = agent.solve(env, options={"problem_id": "L1-11"})
    assert first == {**second, "wall_time": first["wall_time"]}


# --- the real engine -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine():
    """One thread (a tiny model gains nothing from two, and a busy machine loses a lot); restored afterwards."""
    torch = pytest.importorskip("torch")
    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model

    threads = torch.get_num_threads()
    model, tokenizer = tiny_model(seed=0)
    yield HFEngine(model, tokenizer, num_threads=1)
    torch.set_num_threads(threads)


REAL_CONFIGS = {
    "Greedy": {},
    "BestOfN": {"n": 3},
    "BeamSearch": {"beam_width": 2, "num_expansions": 2},
    "MCTS": {"num_simulations": 3, "num_expansions": 2},
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_hf_engine_smoke(env, tiny_engine, name):
    agent = getattr(agents, name)(tiny_engine, env, max_steps=2, max_new_tokens=8, **REAL_CONFIGS[name])
    results = agent.solve_many(env, PROBLEMS[:2])
    assert len(results) == 2
    for result in results:
        assert set(result) >= {"steps", "answer", "correct", "reward", "generated_tokens", "prompt_tokens"}
        assert 0 < len(result["steps"]) <= 2
        assert result["generated_tokens"] > 0 and result["prompt_tokens"] > 0
        assert result["full_prompt_tokens"] >= result["prompt_tokens"]
        assert result["correct"] is False  # a random model does not solve arithmetic


def test_real_engine_same_seed_same_rollouts(env, tiny_engine):
    def run(seed):
        agent = agents.BeamSearch(tiny_engine, env, max_steps=2, max_new_tokens=6, seed=seed)
        return [(r["steps"], r["generated_tokens"]) for r in agent.solve_many(env, PROBLEMS[:2])]

    assert run(1) == run(1)


def test_greedy_predict_is_one_step(env):
    engine = FakeEngine(perfect)
    agent = agents.Greedy(engine, env)
    obs, info = env.reset(options={"problem_id": "L1-2"})
    assert agent.predict(obs, info) == solution_steps(info["problem"])[0]
    assert len(engine.calls) == 1


def test_mcts_rollout_values(env):
    """Rollout leaf values: without a PRM the env's outcome steers MCTS away from the confident wrong step."""
    agent = agents.MCTS(FakeEngine(perfect), env, num_simulations=3, num_expansions=2, leaf_value="rollout")
    assert all(r["correct"] for r in agent.solve_many(env, PROBLEMS))
    engine = FakeEngine(first_sample_wrong)
    agent = agents.MCTS(
        engine, env, num_simulations=4, num_expansions=2, leaf_value="rollout", selection="most_visited"
    )
    assert all(r["correct"] for r in agent.solve_many(env, PROBLEMS))
    with pytest.raises(ValueError, match="leaf_value"):
        agents.MCTS(engine, env, leaf_value="nope").solve_many(env, PROBLEMS[:1])


class CountingPRM:
    """Counts calls into a real PRM."""

    def __init__(self, prm) -> None:
        self.prm, self.calls = prm, 0

    def score(self, questions, step_lists):
        self.calls += 1
        return self.prm.score(questions, step_lists)


def test_real_prm_guides_beam_search_and_mcts(env, tiny_engine, tmp_path):
    from agents.engines.testing import save_tiny_model
    from rewards.prm import load_prm

    prm = CountingPRM(load_prm(save_tiny_model(tmp_path / "prm", seed=1)))
    for name in ("BeamSearch", "MCTS"):
        prm.calls, calls_before = 0, tiny_engine.stats.calls
        agent = getattr(agents, name)(
            tiny_engine, env, prm=prm, max_steps=2, max_new_tokens=4, **REAL_CONFIGS[name]
        )
        results = agent.solve_many(env, PROBLEMS[:2])
        engine_calls = tiny_engine.stats.calls - calls_before
        assert 1 <= prm.calls <= engine_calls, name  # one PRM call per expansion wave at most
        assert all(r["prm_calls"] >= 1 for r in results)


def test_prompt_token_accounting(env):
    """full = every prompt whole; ideal = each prompt minus its parent's prompt (what a prefix cache can skip)."""
    engine = FakeEngine(perfect)
    [result] = agents.BeamSearch(engine, env, beam_width=1, num_expansions=1).solve_many(env, PROBLEMS[:1])
    assert result["prompt_tokens"] == result["full_prompt_tokens"]  # FakeEngine re-processes everything
    assert 0 < result["ideal_prompt_tokens"] < result["full_prompt_tokens"]
    assert result["engine_calls"] == len(result["steps"])
