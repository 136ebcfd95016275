"""``--ray ADDRESS`` and ``--actors N`` on experiments/benchmark.py and experiments/train.py (parsing only: the
engine they build is tested in test_ray_engine.py)."""

from __future__ import annotations

from experiments import benchmark, train


def test_benchmark_takes_ray_and_actors():
    config = benchmark.parse_args(["--ray", "127.0.0.1:6379", "--actors", "4"])
    assert (config.ray, config.actors) == ("127.0.0.1:6379", 4)
    assert benchmark.parse_args([]).ray is None  # in-process by default


def test_train_takes_ray_and_actors():
    config = train.parse_args(["grpo", "--ray", "local", "--actors", "3"])
    assert (config.ray, config.actors) == ("local", 3)
    assert train.parse_args(["grpo"]).ray is None
