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
