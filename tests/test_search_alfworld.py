"""The search agents on openr/ALFWorld-v0 (game commands, not math): a scripted engine that knows the expert plan
(FakePlanEngine) and a real tiny HFEngine smoke test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

import gymnasium as gym  # noqa: E402

import agents  # noqa: E402
import reasoning_gym  # noqa: E402,F401
from agents.adapters import TextGameAdapter, adapter_for  # noqa: E402
from agents.engines.base import Completion, GenerationStats  # noqa: E402

pytestmark = pytest.mark.alfworld

REAL_GAME = "alfworld/real_sample_heat_potato_FloorPlan14"


@pytest.fixture(scope="module")
def env(data_dir: Path):
    folder = data_dir / REAL_GAME
    if not (folder / "game.tw-pddl").is_file():
        pytest.skip(f"{folder} not found")
    environment = gym.make("openr/ALFWorld-v0", game_files=[folder])
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def plan(env) -> list[str]:
    env.reset(seed=0)
    commands = env.unwrapped.expert_plan()
    assert commands
    return commands


class FakePlanEngine:
    """Sample 0 is the next expert command (likely); other samples are a useless ``look`` (unlikely).

    The step index is read from the observation in the user turn: one ``> command`` block per step so far."""

    step_delimiter = "\n\n"
    tokenizer = None

    def __init__(self, plan: list[str]) -> None:
        self.plan = plan
        self.stats = GenerationStats()
        self.prompts: list = []

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, stop=None, seed=None):
        self.prompts.extend(prompts)
        out = []
        for prompt in prompts:
            observation = prompt[-1]["content"]
            done = observation.count("\n\n> ") - observation.count("\n\n> look")
            right = self.plan[min(done, len(self.plan) - 1)]
            group = [Completion(right + "\nextra", [1, 2], [-0.1, -0.1], "stop", 5)]
            group += [Completion("look", [1], [-3.0], "stop", 5) for _ in range(n - 1)]
            out.append(group)
        self.stats.record(out)
        return out


def test_text_games_get_the_text_game_adapter(env):
    adapter = adapter_for(env)
    assert isinstance(adapter, TextGameAdapter) and adapter.stop == ["\n"]
    assert adapter.to_action(Completion("  go to fridge 1\nYou arrive")) == "go to fridge 1"
    prompt = adapter.prompt(None, {"problem": "goal"}, "the observation")
    assert prompt == [{"role": "user", "content": "the observation"}]


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("Greedy", {}),
        ("BestOfN", {"n": 2}),
        ("BeamSearch", {"beam_width": 1, "num_expansions": 2}),
        ("MCTS", {"num_simulations": 20, "num_expansions": 2}),
    ],
)
def test_every_agent_wins_the_real_game_with_a_scripted_policy(env, plan, name, config):
    engine = FakePlanEngine(plan)
    agent = getattr(agents, name)(engine, env, max_steps=len(plan) + 2, **config)
    [result] = agent.solve_many(env, [{"problem_id": env.unwrapped.problem_id}])
    assert result["correct"] is True and result["reward"] == 1.0
    assert [s for s in result["steps"] if s != "look"] == plan
    assert "Your task is to: heat some potato" in engine.prompts[0][-1]["content"]


def test_real_engine_smoke_on_alfworld(env):
    torch = pytest.importorskip("torch")
    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model

    threads = torch.get_num_threads()
    engine = HFEngine(*tiny_model(seed=0), num_threads=1)
    agent = agents.BeamSearch(engine, env, max_steps=1, max_new_tokens=4, beam_width=1, num_expansions=2)
    [result] = agent.solve_many(env, [{"problem_id": env.unwrapped.problem_id}])
    torch.set_num_threads(threads)
    assert len(result["steps"]) == 1 and result["generated_tokens"] > 0 and result["prompt_tokens"] > 0
