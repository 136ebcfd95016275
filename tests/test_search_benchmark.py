"""experiments/benchmark.py end to end on a tiny random model: table, JSON, TensorBoard, PNG."""

from __future__ import annotations

import json

import pytest

from experiments.benchmark import draw_problems, parse_args, summarize


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from agents.engines.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-bench") / "model", seed=0)


def test_benchmark_writes_table_json_tensorboard_and_plot(tiny_folder, tmp_path, capsys):
    import torch

    from experiments.benchmark import main

    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        summary = main(
            [
                "--model", str(tiny_folder), "--dtype", "float32", "--num-problems", "2", "--budgets", "1", "2",
                "--max-steps", "1", "--max-new-tokens", "2", "--out", str(out), "--no-progress", "--threads", "1",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    rows = summary["rows"]
    assert [(r["agent"], r["budget"]) for r in rows] == [
        ("greedy", 1),
        ("best_of_n", 1),
        ("best_of_n", 2),
        ("beam_search", 1),
        ("beam_search", 2),
        ("mcts", 1),
        ("mcts", 2),
    ]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= row["pass_at_k"] <= 1.0
        assert row["generated_tokens"] > 0 and row["engine_calls"] >= 1
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["per_problem"]) == len(rows) and len(saved["problems"]) == 2
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    printed = capsys.readouterr().out
    assert "test-time scaling" in printed and "beam_search" in printed


def test_draw_problems_is_seeded_and_distinct():
    import gymnasium as gym

    import reasoning_gym  # noqa: F401

    env = gym.make("openr/Arithmetic-v0")
    first, again = draw_problems(env, 5, seed=3), draw_problems(env, 5, seed=3)
    assert first == again and len({p["problem_id"] for p in first}) == 5


def test_summarize_and_argument_checks():
    results = [
        {"correct": True, "pass_at_k": True, "generated_tokens": 10, "prompt_tokens": 5, "full_prompt_tokens": 20,
         "ideal_prompt_tokens": 8, "engine_calls": 2, "prm_calls": 0},
        {"correct": False, "pass_at_k": True, "generated_tokens": 30, "prompt_tokens": 15, "full_prompt_tokens": 20,
         "ideal_prompt_tokens": 8, "engine_calls": 4, "prm_calls": 0},
    ]  # fmt: skip
    row = summarize(results, seconds=4.0)
    assert row["accuracy"] == 0.5 and row["pass_at_k"] == 1.0 and row["generated_tokens"] == 20
    assert row["prompt_reuse_ratio"] == 0.5 and row["seconds_per_problem"] == 2.0
    assert row["ideal_reuse_ratio"] == 0.4
    with pytest.raises(SystemExit):
        parse_args(["--agents", "greedy", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--budgets", "0"])
