"""Search runs through the wrapper stack: reward wrappers give search the rewards RL gets, ``TimeLimit`` counts each
branch's own steps, ``TrajectoryRecorder`` records every finished branch, and a wrapper search cannot rewind is named
in a warning (``wrappers.state``)."""

from __future__ import annotations

import gymnasium as gym
import pytest

import agents
import reasoning_gym  # noqa: F401  (registers openr/*)
from agents.adapters import adapter_for
from agents.search.expansion import Expander
from rewards import MathJudger
from tests.test_search_agents import FakeEngine, noisy, perfect
from wrappers import OutcomeReward, PRMReward, StepPenalty, TrajectoryRecorder, read_trajectories
from wrappers.state import get_stack_state, set_stack_state, unbranchable_wrappers

PROBLEMS = [{"problem_id": f"L1-{seed}"} for seed in range(4)]


class LengthPRM:
    """Step j of any solution scores 0.1 * (j + 1) + 0.01 * len(step) % 7: history-dependent delta rewards."""

    def score(self, questions, step_lists):
        return [[0.1 * (j + 1) + 0.01 * (len(s) % 7) for j, s in enumerate(steps)] for steps in step_lists]


def wrapped(**kwargs) -> gym.Env:
    env = gym.make("openr/Arithmetic-v0", level=1, **kwargs)
    return PRMReward(OutcomeReward(StepPenalty(env, 0.01), MathJudger()), LengthPRM(), per_step="delta")


def replayed_return(steps: list[str], options: dict) -> float:
    """What an RL rollout of these steps earns on a fresh, identically wrapped env."""
    env = wrapped()
    env.reset(options=options)
    total = 0.0
    for step in steps:
        _, reward, terminated, truncated, _ = env.step(step)
        total += float(reward)
        if terminated or truncated:
            break
    return total


@pytest.mark.parametrize(
    "name, config",
    [("BestOfN", {"n": 4}), ("BeamSearch", {"beam_width": 2, "num_expansions": 3}), ("MCTS", {})],
)
def test_search_gets_the_rewards_rl_gets_through_reward_wrappers(name: str, config: dict) -> None:
    env = wrapped()
    agent = getattr(agents, name)(FakeEngine(noisy), env, seed=1, **config)
    for options, result in zip(PROBLEMS, agent.solve_many(env, PROBLEMS)):
        assert result["reward"] == pytest.approx(replayed_return(result["steps"], options)), options


def test_stack_state_rewinds_time_limit() -> None:
    env = gym.make("openr/Arithmetic-v0", level=1, max_episode_steps=2)
    env.reset(options=PROBLEMS[0])
    root = get_stack_state(env)
    env.step("Let me think.")
    assert env.step("Still thinking.")[3]  # truncated by TimeLimit
    set_stack_state(env, root)
    assert not env.step("Let me think.")[3]  # the branch from the root has used one step, not three


def test_branches_are_truncated_by_time_limit_at_their_own_depth() -> None:
    env = gym.make("openr/Arithmetic-v0", level=1, max_episode_steps=2)
    expander = Expander(FakeEngine(perfect), env, adapter_for(env), max_steps=100, max_new_tokens=8)
    (root,) = expander.reset([PROBLEMS[0]])
    deep = expander.step(expander.step(root, "Let me think."), "Still thinking.")
    assert deep.truncated and deep.info.get("TimeLimit.truncated", True)
    shallow = expander.step(root, "Another thought.")
    assert not shallow.done


def test_every_finished_branch_is_recorded(tmp_path) -> None:
    path = tmp_path / "search.jsonl"
    env = TrajectoryRecorder(gym.make("openr/Arithmetic-v0", level=1), path)
    results = agents.BestOfN(FakeEngine(noisy), env, n=3, seed=2).solve_many(env, PROBLEMS[:2])
    records = list(read_trajectories(path))
    assert len(records) == 6  # 2 problems x 3 candidates, each a complete episode of its own
    for record in records:
        assert record["actions"] == record["steps"] and record["length"] == len(record["actions"])
        assert record["prompt"].endswith("Solution:") and record["terminated"]
    chosen = {tuple(r["steps"]) for r in results}
    assert chosen <= {tuple(r["steps"]) for r in records}


class StepCounter(gym.Wrapper):
    """A wrapper with per-episode state and no snapshot hooks."""

    def __init__(self, env):
        super().__init__(env)
        self.count = 0

    def step(self, action):
        self.count += 1
        return self.env.step(action)


def test_wrappers_search_cannot_rewind_are_named() -> None:
    env = StepCounter(gym.make("openr/Arithmetic-v0", level=1))
    assert unbranchable_wrappers(env) == ["StepCounter"]
    assert unbranchable_wrappers(wrapped()) == []
    with pytest.warns(UserWarning, match=r"cannot rewind the state of its wrappers \['StepCounter'\]"):
        agents.Greedy(FakeEngine(perfect), env).solve(env, PROBLEMS[0])
