"""``experiments.bench_rl``'s plumbing without a model: what every child is told (``--init``, ``--levels``),
which children ``--impl`` runs, and the summary/table from fake raw timings (named as such)."""

from __future__ import annotations

from dataclasses import asdict

from experiments.bench_rl import (
    child_command,
    env_kwargs,
    format_table,
    implementations,
    model_path,
    parse_args,
    summarise,
)


def test_child_command_passes_init_and_levels_to_every_child(tmp_path):
    (tmp_path / "policy").mkdir()
    args = parse_args(
        [
            "--impl",
            "learners",
            "--init",
            str(tmp_path),
            "--levels",
            "2",
            "--steps",
            "3",
            "--temperature",
            "1.3",
        ]
    )
    for impl in implementations(args):
        command = child_command(impl, args)
        assert command[command.index("--impl") + 1] == impl
        child = parse_args(command[command.index("experiments.bench_rl") + 1 :])
        shared = {k: v for k, v in asdict(args).items() if k != "impl"}
        assert {k: v for k, v in asdict(child).items() if k != "impl"} == shared
        assert child.init == str(tmp_path) and child.levels == (2,) and child.temperature == 1.3


def test_child_command_without_init_has_no_init_flag():
    command = child_command("trl", parse_args([]))
    assert "--init" not in command
    assert command[command.index("--levels") + 1 : command.index("--levels") + 3] == ["1", "2"]


def test_model_path_takes_the_policy_subfolder_of_a_saved_agent(tmp_path):
    assert model_path(parse_args(["--model", "m"])) == "m"
    assert model_path(parse_args(["--init", str(tmp_path)])) == str(tmp_path)  # an HF folder
    (tmp_path / "policy").mkdir()
    assert model_path(parse_args(["--init", str(tmp_path), "--model", "m"])) == str(tmp_path / "policy")
    assert env_kwargs((2,)) == {"levels": [2]}


def test_implementations_per_impl_and_order():
    assert implementations(parse_args(["--impl", "learners"])) == ["openr_all", "oreal"]
    assert implementations(parse_args(["--impl", "learners", "--trl-first"])) == ["oreal", "openr_all"]
    assert implementations(parse_args(["--impl", "paired"])) == ["openr_all", "trl"]
    assert implementations(parse_args(["--impl", "all", "--trl-first"])) == [
        "trl",
        "openr",
        "openr_all",
        "oreal",
    ]
    assert implementations(parse_args(["--impl", "oreal"])) == ["oreal"]


def test_summary_and_table_from_fake_timings():
    fake_raw = {
        "openr_all": {
            "step_seconds": [40.0, 20.0, 22.0, 21.0],
            "rollout_seconds": [10.0, 8.0, 9.0, 8.5],
            "train_seconds": [30.0, 12.0, 13.0, 12.5],
            "sync_seconds": [0.0, 0.0, 0.0, 0.0],
            "rewards": [0.5, 0.6, 0.4, 0.5],
            "completion_tokens": [50.0, 50.0, 50.0, 50.0],
            "trained_fraction": [1.0, 1.0, 1.0, 1.0],
            "peak_rss_gb": 6.0,
            "engine": "hf",
        },
        "oreal": {
            "step_seconds": [30.0, 12.0, 14.0, 13.0],
            "rollout_seconds": [10.0, 8.0, 9.0, 8.5],
            "train_seconds": [20.0, 4.0, 5.0, 4.5],
            "sync_seconds": [0.0, 0.0, 0.0, 0.0],
            "rewards": [0.0, 0.2, -0.2, 0.0],
            "completion_tokens": [50.0, 50.0, 50.0, 50.0],
            "trained_fraction": [0.125, 0.25, 0.125, 0.0],
            "peak_rss_gb": 4.0,
            "engine": "hf",
        },
    }
    summary = summarise(fake_raw)
    assert summary["openr_all"]["median_update_seconds"] == 21.0  # updates 2..N
    assert summary["oreal"]["median_train_seconds"] == 4.5
    assert summary["oreal"]["mean_trained_fraction"] == 0.5 / 4
    assert "ratio_oreal_over_trl" not in summary  # no TRL in this run
    table = format_table(summary)
    assert "| oreal | hf | 13.0 | 8.5 | 4.5 | 0.0 | 0.12 | - | 4.0 |" in table
    assert "| openr_all | hf | 21.0 | 8.5 | 12.5 | 0.0 | 1.00 | - | 6.0 |" in table
