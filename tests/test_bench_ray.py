"""The scaling model of experiments/bench_ray.py (docs/distributed.md) on hand-computed numbers; no Ray needed."""

from __future__ import annotations

import pytest

from experiments.bench_ray import _median_run, project_scaling


def _row(engine: str, search: float, rollouts: float, broadcast: float) -> dict:
    return {
        "engine": engine,
        "search": {"tokens_per_s": search},
        "rollouts": {"tokens_per_s": rollouts},
        "broadcast_seconds": broadcast,
    }


def test_scaling_model_known_answer():
    # 1 actor: 100 tok/s; 2 actors: 180 tok/s -> efficiency 0.9. The GRPO update ran on 2 actors: rollout 10 s,
    # so G (1 actor) = 10 * 2 * 0.9 = 18 s; U = 6 s; broadcast 1 s with 1 actor, 1.5 s with 2 (+0.5 s per actor).
    result = {
        "rows": [_row("1 actor", 100.0, 100.0, 1.0), _row("2 actors", 180.0, 180.0, 1.5)],
        "grpo_update": {"rollout_seconds": 10.0, "optimise_seconds": 6.0, "broadcast_seconds": 1.5},
    }
    out = project_scaling(result, scales=(8,))
    assert out["inputs"]["rollout_seconds_1_actor"] == pytest.approx(18.0)
    assert out["rl_ceiling"] == pytest.approx((18 + 6) / 6)
    base = 18 + 1 + 6
    assert out["8"]["broadcast_seconds"] == pytest.approx(1.0 + 0.5 * 7)
    assert out["8"]["rl_speedup"] == pytest.approx(base / (18 / (8 * 0.9) + 4.5 + 6))
    assert out["8"]["rl_speedup_parallel_broadcast"] == pytest.approx(base / (18 / (8 * 0.9) + 1.0 + 6))
    assert out["8"]["search_speedup"] == pytest.approx(8 * 0.9)


def test_scaling_model_needs_both_sizes_and_an_update():
    assert project_scaling({"rows": [_row("1 actor", 1.0, 1.0, 1.0)], "grpo_update": None}) == {}


def test_median_run_keeps_every_runs_seconds():
    runs = [
        {"seconds": 3.0, "tokens_per_s": 1.0},
        {"seconds": 1.0, "tokens_per_s": 3.0},
        {"seconds": 2.0, "tokens_per_s": 1.5},
    ]
    median = _median_run(runs)
    assert median["seconds"] == 2.0 and median["tokens_per_s"] == 1.5
    assert median["all_seconds"] == [3.0, 1.0, 2.0]


class _FakeRayEngine:
    """Fake (test only): the counters a RayEngine exposes, advanced by a fake workload."""

    def __init__(self) -> None:
        from agents.engines.base import GenerationStats

        self.stats = GenerationStats()
        self.remote_seconds = 5.0
        self.counters = [{"busy_seconds": 1.0, "cpu_seconds": 2.0}, None]

    def actor_status(self) -> list:
        return [dict(c) if c else None for c in self.counters]

    def work(self) -> None:
        self.stats.calls += 2
        self.stats.generated_tokens += 100
        self.remote_seconds += 0.5
        self.counters[0] = {"busy_seconds": 1.25, "cpu_seconds": 2.5}


def test_timed_reports_where_the_time_went():
    from experiments.bench_ray import _time_table, _timed

    engine = _FakeRayEngine()
    run = _timed(engine, engine.work, problems=4)
    assert run["generated_tokens"] == 100 and run["engine_calls"] == 2
    assert run["remote_seconds"] == pytest.approx(0.5)
    assert run["actor_busy_seconds"] == [pytest.approx(0.25), None]  # the second actor did not answer
    assert run["actor_cpu_seconds"] == [pytest.approx(0.5), None]
    assert run["driver_cpu_seconds"] >= 0
    table = _time_table([{"engine": "2 actors", "search": run, "rollouts": run}])
    assert "| 2 actors | rollouts |" in table and "0.2 / -" in table


def test_split_engine_returns_every_sample_in_order_and_times_each_part():
    from agents.engines.testing import byte_level_tokenizer, tiny_model
    from experiments.bench_ray import SplitEngine

    tokenizer = byte_level_tokenizer()
    model, _ = tiny_model(0, tokenizer=tokenizer)
    split = SplitEngine(model, tokenizer, num_actors=2)
    prompts = [f"Problem {i}: {i} + {i} =" for i in range(5)]
    groups = split.generate(prompts, n=3, max_new_tokens=4, temperature=1.0, seed=3)
    assert [len(g) for g in groups] == [3] * 5
    assert len(split.part_seconds) == 1 and all(seconds > 0 for seconds in split.part_seconds[0])
    assert split.stats.calls == 1 and split.stats.generated_tokens == sum(
        len(c.token_ids) for g in groups for c in g
    )
    again = SplitEngine(model, tokenizer, num_actors=2).generate(
        prompts, n=3, max_new_tokens=4, temperature=1.0, seed=3
    )
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in groups]
