"""OREO on tiny random models: data sources and masks, a CI-sized learning check (the value fits known returns,
the policy moves towards rewarded trajectories), iterative collection, persistence, value-guided search."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

from agents.engines import HFEngine
from agents.engines.testing import byte_level_tokenizer, tiny_model
from agents.rl.oreo import OREO, OREOConfig, TrajectoryBatch
from agents.rl.oreo_data import OREOTrajectory, load_trajectories, tokenize_trajectory
from agents.rl.toy import DIGITS_ID, register_toy_envs

register_toy_envs()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_engine(seed: int = 0) -> HFEngine:
    model, tokenizer = tiny_model(seed, tokenizer=byte_level_tokenizer())
    return HFEngine(model, tokenizer, num_threads=1)


def toy_data() -> list[OREOTrajectory]:
    data = []
    for q in range(8):
        data.append(OREOTrajectory(1.0, f"Problem {q}", "Write digits.", ["1234", "5678"]))
        data.append(OREOTrajectory(0.0, f"Problem {q}", "Write digits.", ["abcd", "efgh"]))
    return data


def toy_agent(engine: HFEngine | None = None, **overrides) -> OREO:
    settings = dict(
        batch_size=16,
        micro_batch_size=8,
        learning_rate=1e-3,
        value_learning_rate=1e-3,
        beta=0.1,
        autocast="off",
    )
    settings.update(overrides)
    return OREO(engine or tiny_engine(), DIGITS_ID, OREOConfig(verbose=0, **settings))


def probe(agent: OREO) -> dict[str, torch.Tensor]:
    indices = list(range(len(agent.pool)))
    batch = TrajectoryBatch([agent._tokenized(i) for i in indices], agent.pad_token_id)
    with torch.no_grad():
        return agent.objective(batch, agent._reference_logprobs(indices, batch))


# --- data and masks ----------------------------------------------------------------------------------------------


def test_step_level_masks_mark_each_steps_first_token():
    engine = tiny_engine()
    trajectory = OREOTrajectory(1.0, "Problem 1", "Write digits.", ["12", "345"], last_finish="eos")
    tokens = tokenize_trajectory(trajectory, engine.tokenizer, engine, granularity="step")
    (row,) = tokens.rows
    # byte-level: "1" "2" "\n" "\n" "3" "4" "5" <eos>: a state at each step's first token, every token an action
    assert len(row.response) == 8
    assert row.state == [1, 0, 0, 0, 1, 0, 0, 0]
    assert row.action == [1] * 8
    token_level = tokenize_trajectory(trajectory, engine.tokenizer, engine, granularity="token")
    assert token_level.rows[0].state == [1] * 8


def test_conversation_observation_tokens_are_never_actions():
    engine = tiny_engine()
    conversation = [
        {"role": "user", "content": "Task: heat the egg."},
        {"role": "assistant", "content": "go to a"},
        {"role": "user", "content": "You arrive."},
        {"role": "assistant", "content": "take egg"},
    ]
    trajectory = load_trajectories_from_rows([{"conversations": conversation, "reward": 1}])[0]
    (row,) = tokenize_trajectory(trajectory, engine.tokenizer, engine).rows
    text = engine.tokenizer.decode
    actions = text([t for t, a in zip(row.response, row.action) if a])
    context_inside = text([t for t, a in zip(row.response, row.action) if not a])
    assert "go to a" in actions and "take egg" in actions
    assert "You arrive." in context_inside and "You arrive." not in actions
    assert sum(row.state) == 2  # one state per assistant turn (step level)
    assert row.action[row.state.index(1)] == 1


def load_trajectories_from_rows(rows):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return load_trajectories(f.name)


def test_recorder_files_and_oreo_rows_load(tmp_path):
    import reasoning_gym  # noqa: F401
    from wrappers import TrajectoryRecorder

    path = tmp_path / "traj.jsonl"
    env = TrajectoryRecorder(gym.make("openr/Arithmetic-v0", level=1), path)
    env.reset(seed=3)
    answer = env.unwrapped.problem.answer
    env.step("Let me compute.")
    env.step(f"The answer is {answer}.")
    env.close()
    oreo_rows = tmp_path / "oreo.jsonl"
    oreo_rows.write_text(
        json.dumps({"prompt": "Q: 1+1?\nA:", "response": "1+1=2\nThe answer is 2", "reward": 1}) + "\n"
    )
    recorded, row = load_trajectories([path, oreo_rows])
    assert recorded.reward == 1.0 and recorded.steps == ["Let me compute.", f"The answer is {answer}."]
    engine = tiny_engine()
    tokens = tokenize_trajectory(row, engine.tokenizer, engine, delimiter="\n")
    assert sum(tokens.rows[0].state) == 2 and tokens.reward == 1.0
    assert engine.tokenizer.decode(tokens.rows[0].response).startswith("1+1=2\nThe answer")


# --- learning ----------------------------------------------------------------------------------------------------


def test_value_fits_known_returns():
    """Policy frozen (log-ratios 0): V(s_t) must regress onto R; token-level states after '1' vs after 'a'."""
    agent = toy_agent(learning_rate=0.0, granularity="token")
    agent.add_data(toy_data())
    for _ in range(20):
        agent.train_on(list(range(16)))
    values = probe(agent)["value_mean"]
    assert float(values[0::2].mean()) > 0.8, values  # rewarded trajectories' states
    assert float(values[1::2].mean()) < 0.2, values


def test_policy_moves_towards_rewarded_trajectories():
    agent = toy_agent(learning_rate=1e-3, value_learning_rate=0.0)  # V stays 0: beta * log-ratio -> R
    agent.add_data(toy_data())
    for _ in range(10):
        metrics = agent.train_on(list(range(16)))
    log_ratio = probe(agent)["log_ratio"]
    assert float(log_ratio[0::2].mean()) > 0.3, log_ratio  # rewarded: more likely than under pi_ref
    assert float(log_ratio[0::2].mean()) > float(log_ratio[1::2].mean()) + 0.3
    assert metrics["train/kl"] > 0


def test_value_init_mean_reward_starts_at_the_pools_mean_reward():
    zero = toy_agent(value_learning_rate=0.0, learning_rate=0.0)
    zero.learn(1, data=toy_data())
    assert torch.all(probe(zero)["value_mean"] == 0.0)
    agent = toy_agent(value_learning_rate=0.0, learning_rate=0.0, value_init="mean_reward")
    agent.learn(1, data=toy_data()[:3])  # rewards 1, 0, 1
    torch.testing.assert_close(probe(agent)["value_mean"], torch.full((3,), 2 / 3))
    with pytest.raises(ValueError, match="value_init"):
        toy_agent(value_init="ones")


def test_reference_runs_once_per_distinct_trajectory(monkeypatch):
    agent = toy_agent()
    agent.add_data(toy_data())
    original, rows_read = agent.reference_logprobs, []
    monkeypatch.setattr(
        agent, "reference_logprobs", lambda rows: rows_read.append(len(rows)) or original(rows)
    )
    batch = TrajectoryBatch([agent._tokenized(i) for i in [0, 0, 1, 1]], agent.pad_token_id)
    reference = agent._reference_logprobs([0, 0, 1, 1], batch)
    assert rows_read == [2]  # a repeated trajectory is not run twice
    torch.testing.assert_close(reference[0], reference[1])
    assert not torch.equal(reference[0], reference[2])
    again = agent._reference_logprobs(
        [1, 0], TrajectoryBatch([agent._tokenized(i) for i in [1, 0]], agent.pad_token_id)
    )
    assert rows_read == [2]  # cached
    torch.testing.assert_close(again[0], reference[2])


def test_learn_logs_sb3_keys_and_resumes_exactly(tmp_path):
    config = dict(
        log_dir=str(tmp_path / "logs"), log_formats=("csv", "tensorboard"), batch_size=4, micro_batch_size=4
    )
    agent = toy_agent(**config)
    agent.learn(2, data=toy_data())
    agent.save_checkpoint(tmp_path / "ckpt")
    agent.learn(2)
    resumed = toy_agent(tiny_engine(), **config)
    resumed.add_data(toy_data())
    resumed.load_checkpoint(tmp_path / "ckpt")
    resumed.learn(2)
    for a, b in zip(agent.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(agent.value_head.weight, resumed.value_head.weight)
    header = (tmp_path / "logs" / "progress.csv").read_text().splitlines()[0]
    for key in ("train/value_loss", "train/policy_loss", "train/kl", "train/value_mean"):
        assert key in header
    assert list((tmp_path / "logs").glob("events.out.tfevents*"))


def test_save_load_keeps_policy_and_value(tmp_path):
    agent = toy_agent(value_model="shared")
    agent.learn(1, data=toy_data())
    agent.save(tmp_path / "agent")
    other = OREO.load(tmp_path / "agent", tiny_engine(1), DIGITS_ID)
    torch.testing.assert_close(other.value_head.weight, agent.value_head.weight)
    torch.testing.assert_close(next(other.model.parameters()), next(agent.model.parameters()))
    separate = toy_agent()
    separate.learn(1, data=toy_data())
    separate.save(tmp_path / "separate")
    again = OREO.load(tmp_path / "separate", tiny_engine(1), DIGITS_ID)
    torch.testing.assert_close(again.value_head.weight, separate.value_head.weight)
    torch.testing.assert_close(
        next(again.value_lm.backbone.parameters()), next(separate.value_lm.backbone.parameters())
    )


def test_full_vocabulary_kl_is_nonnegative_and_zero_at_start():
    agent = toy_agent(kl_estimator="full")
    agent.add_data(toy_data())
    assert float(probe(agent)["kl"].abs().max()) < 1e-5  # pi == pi_ref before any update
    agent.train_on(list(range(16)))
    kl = probe(agent)["kl"]
    assert float(kl.min()) >= 0 and float(kl.max()) > 0


def test_iterative_mode_collects_in_recorder_format(tmp_path):
    path = tmp_path / "collected.jsonl"
    agent = toy_agent(
        collect_problems=2,
        samples_per_problem=2,
        updates_per_collection=2,
        batch_size=4,
        max_new_tokens=6,
        data_path=str(path),
    )
    agent.learn(3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 8  # collections at updates 0 and 2, 4 trajectories each
    assert records[0]["schema"] == "openr-gym/trajectory/v1" and "steps" in records[0]
    assert len(load_trajectories(path)) == 8


# --- value-guided search -----------------------------------------------------------------------------------------


def test_value_scorer_guides_beam_search():
    import reasoning_gym  # noqa: F401

    engine = tiny_engine()
    agent = OREO(
        engine, "openr/Arithmetic-v0", OREOConfig(autocast="off", verbose=0, max_new_tokens=8), env_kwargs={}
    )
    scorer = agent.value_scorer()
    scores = scorer.score(["1+1?", "2+2?"], [["a", "b"], ["c"]])
    assert [len(s) for s in scores] == [2, 1] and scorer.tokens_read > 0
    assert all(v == 0.0 for s in scores for v in s)  # zero-initialised head
    search = agent.search_agent(beam_width=2, num_expansions=2, max_steps=2)
    assert search.value is not None and search.value.name == "value"
    env = gym.make("openr/Arithmetic-v0", level=1)
    result = search.solve(env, seed=0)
    assert result["prm_calls"] >= 1 and result["generated_tokens"] > 0
    # one scorer's two counters: a prefix cache reads each node's prompt minus its parent's, never more
    assert 0 < search.prm.new_tokens <= search.prm.tokens_read


@pytest.mark.alfworld
def test_value_guided_turns_on_real_alfworld(data_dir):
    """Sample K commands per turn, play the one of highest value, on a real ALFRED game (the text-game layout:
    the value reads the prompt with the game's observations)."""
    pytest.importorskip("alfworld")
    import reasoning_gym  # noqa: F401

    folder = data_dir / "alfworld/real_sample_heat_potato_FloorPlan14"
    if not (folder / "game.tw-pddl").is_file():
        pytest.skip(f"{folder} not found")
    env = gym.make("openr/ALFWorld-v0", game_files=[folder])
    try:
        agent = OREO(tiny_engine(), env, OREOConfig(autocast="off", verbose=0, max_new_tokens=6))
        search = agent.search_agent(beam_width=1, num_expansions=3, max_steps=2)
        result = search.solve(env, seed=0)
        assert 1 <= len(result["steps"]) <= 2 and search.prm.tokens_read > 0
        _, info = env.reset(seed=0)
        trajectory = OREOTrajectory(
            1.0, info["problem"], "", ["look", "inventory"], problem_id=info["problem_id"]
        )
        agent.add_data([trajectory])
        metrics = agent.train_on([0])  # replays the game for the observations, one row per turn
        rows = agent._tokenized(0).rows
        assert len(rows) == 2 and all(sum(r.state) == 1 and all(r.action) for r in rows)
        assert "> look" in agent.tokenizer.decode(rows[1].context)  # turn 2 reads the game's answer to turn 1
        assert metrics["train/trajectories"] == 1.0
    finally:
        env.close()


def test_train_script_has_an_oreo_subcommand():
    from experiments.train import AGENTS, parse_args

    config = parse_args(["oreo", "--data-files", "a.jsonl", "--beta", "0.1", "--value-model", "shared"])
    assert isinstance(config.agent, OREOConfig) and AGENTS[OREOConfig] == "agents.rl.oreo:OREO"
    assert config.agent.data_files == ("a.jsonl",) and config.agent.beta == 0.1
    assert config.agent.kl_weight == 0.1  # step level's alpha by default


def test_lora_policy_and_value_train_only_adapters_and_head():
    pytest.importorskip("peft")
    agent = toy_agent(lora_r=4, lora_target_modules="q_proj,v_proj")
    assert agent.reference is None  # under LoRA the reference is the base model with adapters off
    frozen = {n: p.detach().clone() for n, p in agent.value_lm.named_parameters() if not p.requires_grad}
    agent.add_data(toy_data())
    before = probe(agent)
    assert float(before["kl"].abs().max()) < 1e-6  # adapters start at zero: pi == pi_ref
    agent.train_on(list(range(16)))
    after = probe(agent)
    assert float((after["log_ratio"] - before["log_ratio"]).abs().max()) > 0
    assert float(agent.value_head.weight.detach().abs().sum()) > 0
    for name, parameter in agent.value_lm.named_parameters():
        if name in frozen:
            torch.testing.assert_close(parameter, frozen[name])


def test_value_scorer_guides_mcts_and_best_of_n():
    import reasoning_gym  # noqa: F401
    from agents.search.best_of_n import BestOfN, BestOfNConfig
    from agents.search.mcts import MCTS, MCTSConfig

    agent = OREO(tiny_engine(), "openr/Arithmetic-v0", OREOConfig(autocast="off", verbose=0))
    env = gym.make("openr/Arithmetic-v0", level=1)
    for search in (
        MCTS(
            agent.engine,
            env,
            MCTSConfig(num_simulations=2, num_expansions=2, max_steps=2, max_new_tokens=6),
            prm=agent.value_scorer(),
        ),
        BestOfN(
            agent.engine,
            env,
            BestOfNConfig(n=2, max_steps=2, max_new_tokens=6, selection="prm_last_max"),
            prm=agent.value_scorer(),
        ),
    ):
        result = search.solve(env, seed=1)
        assert search.value is search.prm and search.prm.calls >= 1 and result["prm_calls"] >= 1


def test_value_model_reads_rows_only_up_to_their_last_state():
    from agents.rl.forward import response_scores

    agent = toy_agent()
    agent.add_data(toy_data())
    torch.nn.init.normal_(
        agent.value_head.weight, std=0.1
    )  # a non-zero head, so the comparison means something
    batch = TrajectoryBatch([agent._tokenized(i) for i in range(4)], agent.pad_token_id)
    assert batch.value_rows.response_mask.sum() < batch.rows.response_mask.sum()  # the last step is not read
    with torch.no_grad():
        full = batch.to_trajectories(response_scores(agent.value_lm.backbone, batch.rows, agent.value_head))
        cut = batch.to_trajectories(
            batch.widen(response_scores(agent.value_lm.backbone, batch.value_rows, agent.value_head))
        )
    states = batch.state_mask.bool()
    torch.testing.assert_close(cut[states], full[states], atol=1e-5, rtol=1e-5)
