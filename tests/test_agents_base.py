"""The shared Agent base: config handling, the step loop of ``solve``, save / load, lazy exports, the adapter."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import gymnasium as gym
import pytest

import agents
import reasoning_gym  # noqa: F401
from agents.adapters import StepAdapter
from agents.base import Agent, AgentConfig
from agents.engines.base import Completion, GenerationStats
from reasoning_gym.arithmetic import generate_problem


class StepByStep(Agent):
    """The smallest real agent: one greedy engine step per ``predict``."""

    def predict(self, obs, info=None):
        adapter = self.adapter(self.env)
        [[completion]] = self.engine.generate(
            [adapter.prompt(self.engine, info)],
            n=1,
            max_new_tokens=self.config.max_new_tokens,
            temperature=0.0,
            stop=adapter.stop,
        )
        return adapter.to_action(completion)


class FakeSolutionEngine:
    """Writes the worked solution of level-1 arithmetic problems, one step per call."""

    step_delimiter = "\n\n"
    tokenizer = None

    def __init__(self) -> None:
        self.stats = GenerationStats()

    def step_prompt(self, question, steps, instruction=""):
        return json.dumps([question, list(steps)])

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, stop=None, seed=None):
        out = []
        for prompt in prompts:
            question, steps = json.loads(prompt)
            solution = next(
                p.solution for p in (generate_problem(1, s) for s in range(100)) if p.question == question
            )
            text = solution.split("\n\n")[len(steps)] + "\n\nextra text after the delimiter"
            out.append([Completion(text, [1, 2, 3], [-0.1] * 3, "stop", 10)] * n)
        self.stats.record(out)
        return out


@pytest.fixture(scope="module")
def tiny_engine():
    """A tiny random model on one thread (restored afterwards)."""
    torch = pytest.importorskip("torch")
    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model

    threads = torch.get_num_threads()
    yield HFEngine(*tiny_model(seed=0), num_threads=1)
    torch.set_num_threads(threads)


@pytest.fixture()
def env():
    environment = gym.make("openr/Arithmetic-v0", level=1)
    yield environment
    environment.close()


def test_solve_runs_the_predict_loop(env):
    agent = StepByStep(FakeSolutionEngine(), env)
    result = agent.solve(options={"problem_id": "L1-3"})
    assert result["correct"] is True and result["reward"] == 1.0
    assert result["steps"] == generate_problem(1, 3).solution.split("\n\n")
    assert result["engine_calls"] == len(result["steps"]) and result["generated_tokens"] == 3 * len(
        result["steps"]
    )
    assert result["prompt_tokens"] == 10 * len(result["steps"])


def test_solve_with_the_real_engine(env, tiny_engine):
    result = StepByStep(tiny_engine, env, max_steps=2, max_new_tokens=5).solve(options={"problem_id": "L1-3"})
    assert 1 <= len(result["steps"]) <= 2 and result["engine_calls"] == len(result["steps"])
    assert result["generated_tokens"] > 0 and result["prompt_tokens"] > 0


def test_config_overrides_and_type_checks(env):
    agent = StepByStep(FakeSolutionEngine(), env, AgentConfig(seed=4), temperature=0.3)
    assert (agent.config.seed, agent.config.temperature) == (4, 0.3)
    with pytest.raises(TypeError):
        agents.BestOfN(FakeSolutionEngine(), env, AgentConfig())
    with pytest.raises(TypeError):
        StepByStep(FakeSolutionEngine(), env, no_such_field=1)
    with pytest.raises(ValueError, match="needs an env"):
        StepByStep(FakeSolutionEngine()).solve()
    with pytest.raises(NotImplementedError):
        StepByStep(FakeSolutionEngine(), env).learn(10)


def test_max_steps_comes_from_the_env_spec(env):
    assert StepByStep(FakeSolutionEngine(), env).max_steps(env) == env.spec.max_episode_steps
    assert StepByStep(FakeSolutionEngine(), env, max_steps=3).max_steps(env) == 3


def test_save_and_load_round_trip(tmp_path, env):
    agent = agents.MCTS(FakeSolutionEngine(), env, num_simulations=5, c_puct=2.5, seed=9)
    agent.save(tmp_path / "mcts")
    loaded = agents.MCTS.load(tmp_path / "mcts", FakeSolutionEngine(), env)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(agent.config)
    assert (
        agents.MCTS.load(tmp_path / "mcts", FakeSolutionEngine(), num_expansions=7).config.num_expansions == 7
    )
    with pytest.raises(ValueError, match="holds a MCTS"):
        agents.BeamSearch.load(tmp_path / "mcts", FakeSolutionEngine())


def test_adapter_reads_the_env_and_cuts_actions(env):
    adapter = StepAdapter.from_env(env)
    assert adapter.stop == ["\n\n"] and adapter.instruction == env.unwrapped.instruction
    assert adapter.to_action(" 2 + 3 = 5\n\nnext") == "2 + 3 = 5"
    assert adapter.to_action(Completion("x" * 10_000)) == "x" * 4000
    with pytest.raises(ValueError):
        StepAdapter(step_delimiter="")


def test_adapter_renders_other_delimiters_itself(tiny_engine):
    adapter = StepAdapter(instruction="Play.", step_delimiter="\n")
    prompt = adapter.prompt(tiny_engine, {"problem": "goal", "steps": ["go north", "take key"]})
    assert prompt.endswith("go north\ntake key\n")


def test_import_agents_is_light_and_exports_lazily():
    code = (
        "import sys, agents; assert 'torch' not in sys.modules and 'transformers' not in sys.modules;"
        "print(sorted(n for n in ('Greedy', 'BestOfN', 'BeamSearch', 'MCTS') if n in dir(agents)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['BeamSearch', 'BestOfN', 'Greedy', 'MCTS']"
    assert agents.MCTS.__name__ == "MCTS"
    with pytest.raises(AttributeError):
        agents.NoSuchAgent  # noqa: B018
