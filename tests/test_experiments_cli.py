"""Every experiments script builds its command line from a documented config dataclass with tyro."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

pytest.importorskip("tyro")
pytest.importorskip("torch")

# script module -> its config class (one per script; names are unique across scripts)
SCRIPTS = {
    "experiments.train": "TrainScriptConfig",
    "experiments.benchmark": "BenchmarkConfig",
    "experiments.collect_prm_data": "PRMDataConfig",
    "experiments.bench_engines": "EngineBenchConfig",
    "experiments.bench_envs": "EnvBenchConfig",
    "experiments.bench_rl": "RLBenchConfig",
    "experiments.bench_hf_decode": "HFDecodeBenchConfig",
    "experiments.search_efficiency": "SearchEfficiencyConfig",
    "experiments.prm_best_of_n": "PRMBestOfNConfig",
    "experiments.bench_alfworld": "ALFWorldBenchConfig",
    "experiments.plot_rl": "PlotRunsConfig",
    "experiments.gpu_check": "GPUCheckConfig",
    "experiments.train_prm": "PRMTrainConfig",
    "experiments.collect_alfworld_experts": "CollectExpertsConfig",
    "experiments.eval_alfworld": "EvalALFWorldConfig",
}

# scripts that need some flags, and the config fields those flags set
REQUIRED = {
    "experiments.train_prm": ["--data", "a.jsonl"],
    "experiments.prm_best_of_n": ["--samples", "s.jsonl", "--prm", "p"],
    "experiments.plot_rl": ["run1", "--out", "o.png"],
}
REQUIRED_VALUES = {
    "experiments.train_prm": {"data": ["a.jsonl"]},
    "experiments.prm_best_of_n": {"samples": "s.jsonl", "prm": "p"},
    "experiments.plot_rl": {"runs": (Path("run1"),), "out": Path("o.png")},
}


# scripts whose module needs an optional extra at import time
EXTRAS = {"experiments.bench_alfworld": "alfworld"}


def _config_class(module_name: str):
    if module_name in EXTRAS:
        pytest.importorskip(EXTRAS[module_name])
    return getattr(importlib.import_module(module_name), SCRIPTS[module_name])


def _field_docs(config_class) -> dict[str, str]:
    """Field docstrings as tyro reads them (the string under each field)."""
    from tyro._docstrings import get_field_docstring

    return {
        f.name: get_field_docstring(config_class, f.name, ()) or "" for f in dataclasses.fields(config_class)
    }


@pytest.mark.parametrize("module_name", sorted(SCRIPTS))
def test_every_field_is_documented(module_name):
    config_class = _config_class(module_name)
    undocumented = [name for name, doc in _field_docs(config_class).items() if not doc.strip()]
    assert undocumented == []


def test_config_class_names_are_unique_across_the_project():
    import ast
    from collections import Counter

    root = Path(__file__).resolve().parent.parent
    names = Counter(
        node.name
        for package in ("agents", "rewards", "wrappers", "experiments", "reasoning_gym")
        for path in (root / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config")
    )
    assert [name for name, count in names.items() if count > 1] == []


@pytest.mark.parametrize("module_name", sorted(SCRIPTS))
def test_no_arguments_gives_the_config_defaults(module_name):
    config_class = _config_class(module_name)
    module = importlib.import_module(module_name)
    required = REQUIRED.get(module_name, [])
    if required:
        with pytest.raises(SystemExit):
            module.parse_args([])
    assert module.parse_args(required) == config_class(**REQUIRED_VALUES.get(module_name, {}))


def test_train_agent_is_a_subcommand_with_its_config_as_flags():
    from agents.rl.grpo import GRPOConfig
    from agents.rl.ppo import PPOConfig
    from experiments.train import parse_args

    default = parse_args([])
    assert default.agent == GRPOConfig() and default.steps == 10
    parsed = parse_args(["--steps", "3", "ppo", "--epochs", "2", "--seed", "5", "--autocast", "off"])
    assert isinstance(parsed.agent, PPOConfig)
    assert (parsed.steps, parsed.agent.epochs, parsed.agent.seed, parsed.agent.autocast) == (3, 2, 5, "off")
    assert parse_args(["grpo", "--no-scale-rewards"]).agent.scale_rewards is False
    with pytest.raises(SystemExit):
        parse_args(["grpo", "--no-such-field", "1"])


def test_train_rollout_engine_is_a_flag():
    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model
    from experiments.train import build_engine, parse_args

    assert parse_args([]).engine == "hf"
    assert parse_args(["grpo", "--engine", "vllm", "--vllm-eager"]).engine == "vllm"
    with pytest.raises(SystemExit):
        parse_args(["--engine", "sglang"])
    model, tokenizer = tiny_model(0, num_layers=1, hidden_size=32)
    engine = build_engine("hf", model, tokenizer, threads=1)
    assert isinstance(engine, HFEngine) and engine.model is model  # samples from the trained weights, no copy
    with pytest.raises(ValueError, match="engine must be"):
        build_engine("sglang", model, tokenizer)


def test_train_runs_end_to_end_with_a_tiny_model(tmp_path):
    from agents.engines.testing import save_tiny_model
    from experiments.train import main

    model = save_tiny_model(tmp_path / "model", num_layers=1, hidden_size=32)
    log_dir = tmp_path / "run"
    results = main(
        ["sft", "--model", str(model), "--env-kwargs", '{"level": 1}', "--steps", "1", "--batch-size", "2"]
        + ["--micro-batch-size", "2", "--max-new-tokens", "4", "--eval-problems", "0"]
        + ["--log-dir", str(log_dir), "--save", str(tmp_path / "agent"), "--threads", "1", "--verbose", "0"]
    )
    assert results["agent"] == "sft" and results["config"]["agent"]["batch_size"] == 2
    assert (log_dir / "progress.csv").is_file() and "eval" not in results
    assert results["hardware"]["cpu_capability"] and results["hardware"]["model_dtype"] == "float32"
    assert json.loads((log_dir / "results.json").read_text())["agent"] == "sft"
    assert (tmp_path / "agent" / "agent.json").is_file()


def test_train_with_a_prm_wraps_only_the_training_env(tmp_path):
    import csv

    from agents.engines.testing import save_tiny_model
    from agents.rl.trainer import make_vec_env
    from experiments.train import main, parse_args, prm_reward_env
    from wrappers import PRMReward

    model = save_tiny_model(tmp_path / "model", num_layers=1, hidden_size=32)
    prm = save_tiny_model(tmp_path / "prm", seed=1, num_layers=1, hidden_size=32)
    flags = ["grpo", "--process-rewards", "--prm", str(prm), "--model", str(model)]
    flags += ["--env-kwargs", '{"level": 1}']
    env = prm_reward_env(parse_args(flags), {"level": 1})
    assert isinstance(make_vec_env(env, 2, {"level": 1}).envs[0], PRMReward)  # rebuilt from the spec
    with pytest.raises(SystemExit, match="not a saved PRM folder"):
        prm_reward_env(parse_args([*flags, "--prm", str(tmp_path / "missing")]), {"level": 1})

    log_dir = tmp_path / "run"
    results = main(
        [*flags, "--steps", "1", "--prompts-per-update", "1", "--group-size", "2", "--max-new-tokens", "4"]
        + ["--kl-coef", "0", "--eval-problems", "2", "--skip-initial-eval", "--log-dir", str(log_dir)]
        + ["--threads", "1", "--verbose", "0", "--autocast", "off"]
    )
    rows = list(csv.DictReader((log_dir / "progress.csv").open()))
    training_reward = float(next(r["rollout/ep_rew_mean"] for r in rows if r.get("rollout/ep_rew_mean")))
    assert training_reward * 2 != round(training_reward * 2)  # PRM scores in (0, 1) added to 0/1 outcomes
    assert results["eval"][-1]["accuracy"] in (0.0, 0.5, 1.0)  # held out: the plain env's 0/1 outcome


def test_no_experiments_script_hand_writes_argparse():
    root = Path(__file__).resolve().parent.parent / "experiments"
    offenders = [path.name for path in sorted(root.glob("*.py")) if "argparse" in path.read_text()]
    assert offenders == []


def test_plot_rl_draws_the_chosen_training_column(tmp_path):
    from experiments.plot_rl import main

    for name, reward in (("a", 1.7), ("b", 0.4)):
        (tmp_path / name).mkdir()
        rows = ["time/updates,rollout/ep_rew_mean,rollout/accuracy,eval/accuracy"]
        rows += [f"{u},{reward},0.5,{0.5 if u == 2 else ''}" for u in (1, 2)]
        (tmp_path / name / "progress.csv").write_text("\n".join(rows) + "\n")
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for key in ("rollout/accuracy", "rollout/ep_rew_mean"):  # rewards above 1 widen the axis
        out = main(
            [*runs, "--out", str(tmp_path / "plot.png"), "--training-key", key, "--start-accuracy", "0.4"]
        )
        assert out.stat().st_size > 1000
