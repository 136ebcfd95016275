"""RayEngine on a local Ray instance (2 CPUs, 2 engine actors of 1 thread, tiny random models).

Checked against the in-process HFEngine on the same weights: results complete and in order, prefix affinity,
weights broadcast after a GRPO update (each actor's greedy output = the trainer's model), an actor killed in the
middle of a batch (restarted, its part retried elsewhere, nothing lost or duplicated, the new weights reloaded),
and a request that keeps failing (a clear error naming the actors and the request). One Ray instance and one
engine for the module: actor start-up dominates the time.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from agents.engines import HFEngine, RayEngine  # noqa: E402
from agents.engines.ray_engine import RayEngineError, connect  # noqa: E402
from agents.engines.testing import byte_level_tokenizer, tiny_model  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_torch_thread")]

PROMPTS = [f"Problem {i}: what is {i} plus {2 * i}?" for i in range(8)]


@pytest.fixture(scope="module")
def ray_instance():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect("local", num_cpus=2, log_to_driver=False)  # a private instance on 127.0.0.1, no dashboard
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def engine(ray_instance, tokenizer):
    model, _ = tiny_model(0, tokenizer=tokenizer)
    with RayEngine(model, tokenizer, num_actors=2, request_timeout=120, startup_timeout=300) as engine:
        yield engine


def local_engine(model, tokenizer) -> HFEngine:
    return HFEngine(model, tokenizer, num_threads=1)


def texts(groups) -> list[list[str]]:
    return [[c.text for c in group] for group in groups]


def test_batch_is_spread_and_comes_back_complete_and_in_order(engine, tokenizer):
    local = local_engine(engine.model, tokenizer)
    got = engine.generate(PROMPTS, n=2, max_new_tokens=6, temperature=0)
    want = local.generate(PROMPTS, n=2, max_new_tokens=6, temperature=0)
    assert texts(got) == texts(want)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert {piece.actor for piece in engine.last_routes} == {0, 1}
    assert engine.stats.generated_tokens >= sum(len(c.token_ids) for g in got for c in g)
    served = [status["stats"]["generated_tokens"] for status in engine.actor_status()]
    assert all(count > 0 for count in served)
    scores = engine.score(PROMPTS[:3], [" 12", " x", " ab"])
    expected = local.score(PROMPTS[:3], [" 12", " x", " ab"])
    assert [len(s) for s in scores] == [len(s) for s in expected]
    assert all(abs(a - b) < 1e-4 for row, ref in zip(scores, expected) for a, b in zip(row, ref))


def test_samples_are_distinct_across_actors_and_reproducible(engine):
    group = [PROMPTS[0]] * 4  # a GRPO group: four copies of one prompt, one sample each
    engine.reset_prefix_cache()  # same placement (routing follows what each actor has cached) -> same samples
    first = engine.generate(group, n=1, max_new_tokens=8, temperature=1.0, seed=7)
    engine.reset_prefix_cache()
    again = engine.generate(group, n=1, max_new_tokens=8, temperature=1.0, seed=7)
    assert texts(first) == texts(again)
    assert len({tuple(g[0].token_ids) for g in first}) > 1
    split = engine.generate([PROMPTS[1]], n=6, max_new_tokens=8, temperature=1.0, seed=1)
    assert len(split[0]) == 6 and {p.actor for p in engine.last_routes} == {0, 1}
    assert len({tuple(c.token_ids) for c in split[0]}) > 1


def test_bench_split_engine_samples_what_the_ray_engine_samples(engine, tokenizer):
    """bench_ray's SplitEngine (the same split, run in this process) must sample exactly what the RayEngine does,
    or its ceiling would be measured on other work."""
    from experiments.bench_ray import SplitEngine

    prompts = [PROMPTS[0]] * 3 + PROMPTS[1:4]
    engine.reset_prefix_cache()
    want = engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=11)
    split = SplitEngine(engine.model, tokenizer, num_actors=2)
    got = split.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=11)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert len(split.part_seconds) == 1 and all(seconds > 0 for seconds in split.part_seconds[0])


def test_children_go_to_the_actor_that_generated_their_parent(engine):
    parents = [engine.step_prompt(f"What is {i} times 3?", [], "Solve step by step.") for i in range(4)]
    steps = engine.generate(parents, max_new_tokens=12, temperature=0, stop=["\n\n"])
    owner = {piece.prompt: piece.actor for piece in engine.last_routes}
    children = [
        engine.step_prompt(f"What is {i} times 3?", [steps[i][0].text or "x"], "Solve step by step.")
        for i in range(4)
    ]
    engine.generate(
        children[::-1], max_new_tokens=4, temperature=0
    )  # reversed: position alone cannot explain it
    assert {3 - piece.prompt: piece.actor for piece in engine.last_routes} == owner


def test_trainer_update_reaches_every_actor(engine, tokenizer):
    from agents.rl.grpo import GRPO, GRPOConfig
    from agents.rl.toy import DIGITS_ID, register_toy_envs

    register_toy_envs()
    before = [p.detach().clone() for p in engine.model.parameters()]
    config = GRPOConfig(
        prompts_per_update=2,
        group_size=4,
        max_new_tokens=6,
        max_steps=1,
        learning_rate=5e-3,
        kl_coef=0.0,
        autocast="off",
        verbose=0,
        seed=0,
    )
    agent = GRPO(engine, DIGITS_ID, config)
    assert agent.model is engine.model  # the trainer trains the engine's local copy
    agent.learn(2)
    assert any(not (a == b.detach()).all() for a, b in zip(before, agent.model.parameters()))
    assert engine.last_broadcast_seconds is not None
    want = texts(local_engine(agent.model, tokenizer).generate(PROMPTS, max_new_tokens=8, temperature=0))
    for actor_output in engine.generate_each(PROMPTS, max_new_tokens=8, temperature=0):
        assert texts(actor_output) == want
    assert texts(engine.generate(PROMPTS, max_new_tokens=8, temperature=0)) == want
    assert {status["version"] for status in engine.actor_status()} == {engine._version}


def wait_until_busy(engine, actor: int, limit: float = 60.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = engine.actor_status()[actor]
        if status and status["busy_for"] is not None:
            return status
        time.sleep(0.02)
    raise AssertionError("the actor never started its part of the batch")


def test_actor_killed_mid_batch_is_restarted_and_its_part_retried(engine, tokenizer):
    prompts = [f"Item {i}: count to twenty." for i in range(16)]
    want = texts(local_engine(engine.model, tokenizer).generate(prompts, max_new_tokens=48, temperature=0))
    faults_before = len(engine.faults)
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(out=engine.generate(prompts, max_new_tokens=48, temperature=0))
    )
    worker.start()
    victim = wait_until_busy(engine, 0)
    os.kill(victim["pid"], signal.SIGKILL)
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert texts(result["out"]) == want  # complete, in order, nothing duplicated
    fault = engine.faults[faults_before]
    assert (
        fault["actor"] == "engine-0" and fault["retried_on"] == 1 and "generate request" in fault["request"]
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # Ray restarts it (max_restarts), with the current weights
        status = engine.actor_status()[0]
        if status is not None and status["pid"] != victim["pid"]:
            break
        time.sleep(0.5)
    assert status is not None and status["pid"] != victim["pid"]
    assert status["version"] == 0  # restarted with its start-up weights ...
    want = texts(local_engine(engine.model, tokenizer).generate(prompts[:2], max_new_tokens=8, temperature=0))
    for actor_output in engine.generate_each(prompts[:2], max_new_tokens=8, temperature=0):
        assert texts(actor_output) == want  # ... and its next request loaded the trainer's current ones first
    assert engine.actor_status()[0]["version"] == engine._version


def test_request_that_keeps_failing_names_the_actors_and_the_request(engine):
    engine.request_timeout, engine.max_attempts = 0.05, 2
    try:
        with pytest.raises(RayEngineError) as caught:
            engine.generate([f"Long {i}" for i in range(32)], max_new_tokens=400, temperature=0)
    finally:
        engine.request_timeout, engine.max_attempts = 120, 3
    message = str(caught.value)
    assert "generate request for prompts" in message and "failed 2 times" in message
    assert len(re.findall(r"engine-\d \(pid \d+\)", message)) == 2  # each attempt names its actor
    assert "no answer within 0.05 s (actor restarted)" in message
    assert {fault["actor"] for fault in engine.faults} == {"engine-0", "engine-1"}


def test_bad_input_raises_as_in_process(engine):
    with pytest.raises(TypeError):
        engine.generate("not a list")
    with pytest.raises(ValueError):
        engine.generate([""])
