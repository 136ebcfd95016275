"""ALFWorld agents that learn: expert records, the chat view's loss masks, SFT on expert play, batched play and the
value-guided choice, all on real generated games with a tiny model (marker ``alfworld``; skips without the extra)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

pytestmark = pytest.mark.alfworld


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    """Two planner games and a held-out list of six, written by the collection script."""
    from experiments.collect_alfworld_experts import main

    out = tmp_path_factory.mktemp("experts")
    summary = main(["--train-games", "2", "--heldout-games", "6", "--out", str(out), "--no-progress"])
    return out, summary


@pytest.fixture(scope="module")
def tiny():
    from agents.engines.testing import tiny_model

    return tiny_model(seed=0)


def test_game_split_is_disjoint_and_mixes_task_types():
    from experiments.collect_alfworld_experts import game_split
    from reasoning_gym.alfworld import TASK_TYPES

    seen = game_split(seed=3, train_games=50, heldout_games=12, heldout_split="train")
    assert not set(seen["train"]) & set(seen["heldout"]) and len(set(seen["train"])) == 50
    seeds = [int(p.rsplit("-", 1)[1]) for p in seen["heldout"]]
    assert sorted({s % len(TASK_TYPES) for s in seeds}) == list(range(6))  # every task type, twice
    assert game_split(3, 50, 12, "train") == seen and game_split(4, 50, 12, "train") != seen
    unseen = game_split(seed=3, train_games=5, heldout_games=6, heldout_split="valid_unseen")
    assert all(p.startswith("gen-valid_unseen-") for p in unseen["heldout"])


def test_expert_records_round_trip(expert_run, tiny):
    """The records replay to a win, their token ids decode to the commands, and the loaders read them as chats."""
    from agents.rl.oreo_data import load_trajectories
    from experiments.collect_alfworld_experts import make_env
    from wrappers.recorder import SCHEMA, read_trajectories

    out, summary = expert_run
    records = list(read_trajectories(out / "train.jsonl"))
    assert len(records) == 2 and summary["expert_success"] == 1.0
    assert summary["fits_context"] and 0 < summary["chat_tokens_max"] <= summary["model_context"]
    assert len(json.loads((out / "heldout.json").read_text())["task_types"]) == 6
    tokenizer = tiny[1]
    env = make_env(False, 50)
    try:
        for record in records:
            assert record["schema"] == SCHEMA and record["correct"] is True
            assert [tokenizer.decode(ids) for ids in record["token_ids"]] == record["steps"]
            assert len(record["extras"]["replies"]) == len(record["steps"])
            env.reset(options={"problem_id": record["problem_id"]})
            for command in record["steps"]:
                _, _, terminated, _, info = env.step(command)
            assert terminated and info["is_success"]
    finally:
        env.close()
    trajectories = load_trajectories(out / "train.jsonl")
    assert all(t.reward == 1.0 and t.conversation for t in trajectories)
    turns = trajectories[0].conversation
    assert [m["content"] for m in turns if m["role"] == "assistant"] == records[0]["steps"]
    assert turns[0]["role"] == "user" and "Your task is to:" in turns[0]["content"]


def test_loss_mask_covers_only_command_tokens(expert_run, tiny):
    """The trained tokens of a chat are exactly the commands (each with its end-of-turn token): no game text."""
    from agents.rl.oreo_data import conversation_row, load_trajectories

    out, _ = expert_run
    tokenizer = tiny[1]
    trajectory = load_trajectories(out / "train.jsonl")[0]
    row = conversation_row(tokenizer, trajectory.conversation, "step", 4096)
    trained = [t for t, a in zip(row.response, row.action) if a]
    end = tokenizer.eos_token  # ChatML: <|im_end|> closes each assistant turn
    assert tokenizer.decode(trained) == "".join(f"{s}{end}" for s in trajectory.steps)
    context = tokenizer.decode([t for t, a in zip(row.response, row.action) if not a])
    assert trajectory.conversation[2]["content"] in context  # the game's reply is context
    assert sum(row.state) == len(trajectory.steps)  # one OREO state per command turn


def test_sft_on_expert_play_lowers_command_nll(expert_run, tiny):
    """A few SFT steps on the expert chats lower the NLL of the expert commands (assistant tokens only)."""
    import copy

    from agents.engines import HFEngine
    from agents.rl.sft import SFT, SFTConfig

    out, _ = expert_run
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    config = SFTConfig(
        data_files=(str(out / "train.jsonl"),),
        batch_size=2,
        micro_batch_size=2,
        learning_rate=1e-3,
        max_response_tokens=1024,
        autocast="off",
        verbose=0,
        log_formats=(),
    )
    agent = SFT(HFEngine(model, tokenizer), "openr/ALFWorld-v0", config)
    examples = agent.file_examples()
    assert len(examples) == 2 and all(e.conversation for e in examples)
    before = agent.loss_on(examples)["train/loss"]  # one step on everything, then measure again
    agent.learn(6)
    after = agent.loss_on(examples)["train/loss"]
    assert after < 0.8 * before
    tokens = agent.loss_on(examples)["train/tokens"]
    commands = sum(
        len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for e in examples for s in e.steps
    )
    assert tokens == commands


def test_play_games_batched_records_and_value_choice(tiny):
    """Two games in one wave (one engine call per turn), recorded as chats; the value chooser reads V at the next
    prompt of each distinct candidate and plays the best."""
    import torch

    from agents.engines import HFEngine
    from agents.game_chat import ChatGameAdapter, ValueChooser, chat_record, play_games
    from experiments.collect_alfworld_experts import make_env

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer)
    envs = [make_env(False, 50) for _ in range(2)]
    scratch = make_env(False, 50)
    try:
        adapter = ChatGameAdapter.from_env(envs[0])
        timings: dict[str, float] = {}
        ids = ["gen-train-000000", "gen-train-000001"]
        chats = play_games(engine, envs, ids, adapter, max_steps=2, max_new_tokens=6, timings=timings)
        assert engine.stats.calls == 2 and timings["env_steps"] == 4
        assert [c.problem_id for c in chats] == ids and all(len(c.commands) == 2 for c in chats)
        prompt = chats[0].prompt()
        assert [m["role"] for m in prompt] == ["user", "assistant", "user", "assistant", "user"]
        record = chat_record(chats[0])
        assert record["correct"] is False and len(record["extras"]["conversations"]) == 4

        class Probe(
            torch.nn.Module
        ):  # a value that prefers prompts whose last hidden state has a large feature 0
            def forward(self, hidden):
                return hidden[..., :1]

        chooser = ValueChooser(model, Probe(), tokenizer, scratch)
        picks_chats = play_games(
            engine,
            envs[:1],
            ids[:1],
            adapter,
            max_steps=1,
            max_new_tokens=6,
            temperature=1.0,
            num_candidates=3,
            chooser=chooser,
            seed=0,
        )
        assert len(picks_chats[0].commands) == 1 and chooser.values_read >= 1
        shown = ChatGameAdapter(show_admissible=True).start(
            "task\n\nAdmissible commands: look", {"admissible_commands": ["look"]}
        )
        assert shown.prompt()[0]["content"] == "task\n\nAdmissible commands: look"
    finally:
        for env in envs + [scratch]:
            env.close()


def test_eval_script_writes_table_json_png(tmp_path):
    from agents.engines.testing import save_tiny_model
    from experiments.eval_alfworld import main

    policy = save_tiny_model(tmp_path / "tiny")
    results = main(
        [
            "--policy",
            str(policy),
            "--games",
            "2",
            "--split",
            "train",
            "--max-steps",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "eval"),
            "--record",
            str(tmp_path / "rollouts.jsonl"),
        ]
    )
    greedy = results["modes"]["greedy"]
    assert greedy["per_task"]["all"]["games"] == 2 and greedy["env_steps"] == 4
    assert greedy["search"]["games"] == 2
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert "receptacles reached per game" in (tmp_path / "eval" / "results.md").read_text()
    from agents.rl.oreo_data import load_trajectories

    assert len(load_trajectories(tmp_path / "rollouts.jsonl")) == 2


def test_bench_chat_kv_reuse_processes_fewer_prompt_tokens(tmp_path):
    """A cache sized to the wave prefills only each turn's new text: fewer prompt tokens than no cache, the same
    games and steps."""
    from agents.engines.testing import save_tiny_model
    from experiments.bench_alfworld_chat import main

    policy = save_tiny_model(tmp_path / "tiny")
    play = [
        "--play.policy",
        str(policy),
        "--play.games",
        "2",
        "--play.split",
        "train",
        "--play.max-steps",
        "3",
    ]
    summary = main(
        [*play, "--play.max-new-tokens", "4", "--budgets", "0", "None", "--out", str(tmp_path / "b")]
    )
    none, wave = summary["rows"]
    assert (none["prefix_cache_tokens"], wave["prefix_cache_tokens"]) == (0, 2 * 8192)
    assert none["env_steps"] == wave["env_steps"] == 6
    assert 0 < wave["engine_prompt_tokens"] < 0.7 * none["engine_prompt_tokens"]
    assert sorted(wave["commands"]) == sorted(none["commands"]) and len(none["commands"]) == 2
    assert (tmp_path / "b" / "results.json").is_file()


def test_handcoded_expert_chat_wins_a_game(tiny):
    """The exploring expert (ALFWorld's hand-coded agent) recorded through the same chat."""
    from agents.game_chat import ChatGameAdapter
    from experiments.collect_alfworld_experts import make_env, play_expert

    env = make_env(False, 50)
    try:
        chat = play_expert(env, "gen-train-000000", ChatGameAdapter.from_env(env), tiny[1], 50, "handcoded")
    finally:
        env.close()
    assert chat.won and len(chat.commands) == len(chat.replies) == len(chat.token_ids) >= 2


def test_value_chooser_plays_the_highest_value_and_a_winning_command(tiny):
    """Known answers: with V fixed per command the best-valued candidate is chosen; a candidate that wins the game
    beats any V below 1; the real game is left as it was (candidates run on the scratch copy)."""
    from agents.game_chat import ChatGameAdapter, ValueChooser
    from experiments.collect_alfworld_experts import make_env

    env, scratch = make_env(False, 50), make_env(False, 50)
    try:
        adapter = ChatGameAdapter.from_env(env)
        observation, info = env.reset(options={"problem_id": "gen-train-000000"})
        chat = adapter.start(observation, info)
        chooser = ValueChooser(tiny[0], None, tiny[1], scratch)
        chooser.values_after = lambda prompt, nexts: [
            0.9 if p[-2]["content"] == "inventory" else 0.2 for p in nexts
        ]
        assert chooser([chat], [env], [["look", "inventory", "look"]]) == [1]
        plan = env.unwrapped.expert_plan()
        for command in plan[:-1]:
            _, _, _, _, info = env.step(command)
            chat.add(command, info["feedback"], info["admissible_commands"], None)
        before = env.unwrapped.get_state()
        assert chooser([chat], [env], [["inventory", plan[-1]]]) == [1]
        assert env.unwrapped.get_state() == before
        _, _, terminated, _, info = env.step(plan[-1])
        assert terminated and info["is_success"]
    finally:
        env.close()
        scratch.close()


def test_state_values_one_pass_equals_a_pass_per_state(tiny):
    """V at every state of a played game read from one pass over its last prompt equals reading each state's
    prompt on its own (the earlier prompts are token prefixes of the last one); the same for candidates' next
    states read through the current prompt's key/value cache."""
    import torch

    from agents.game_chat import ChatGameAdapter, ValueChooser
    from experiments.collect_alfworld_experts import make_env

    env = make_env(False, 50)
    try:
        observation, info = env.reset(options={"problem_id": "gen-train-000001"})
        chat = ChatGameAdapter.from_env(env).start(observation, info)
        for command in env.unwrapped.expert_plan()[:3] + ["jump"]:
            _, _, _, _, info = env.step(command)
            chat.add(command, info["feedback"], info["admissible_commands"], None)
        torch.manual_seed(0)
        head = torch.nn.Linear(tiny[0].config.hidden_size, 1)
        chooser = ValueChooser(tiny[0], head, tiny[1], None)
        one_pass = chooser.state_values(chat)
        prompts = []
        for t in range(len(chat.commands)):
            prefix = ChatGameAdapter().start(chat.opening, {})
            for command, reply in zip(chat.commands[:t], chat.replies[:t]):
                prefix.add(command, reply, [], None)
            prompts.append(prefix.prompt())
        assert len(one_pass) == 4
        assert one_pass == pytest.approx(chooser.values(prompts), abs=1e-4)
        # the candidates' continuations read through the shared prompt's cache equal full passes
        nexts = []
        for command in ["look", "inventory", "go to drawer 1"]:
            after = ChatGameAdapter().start(chat.opening, {})
            for done, reply in zip(chat.commands, chat.replies):
                after.add(done, reply, [], None)
            after.add(command, f"You did {command}.", [], None)
            nexts.append(after.prompt())
        current = nexts[0][:-2]
        assert chooser.values_after(current, nexts) == pytest.approx(chooser.values(nexts), abs=1e-4)
    finally:
        env.close()


def test_failure_stage_and_auc_known_answers():
    from agents.game_chat import GameChat
    from experiments.eval_alfworld import auc, failure_stage, failures

    def game(replies, won=False, commands=None):
        chat = GameChat("task")
        for i, reply in enumerate(replies):
            chat.add((commands or [f"c{i}" for i in range(len(replies))])[i], reply, [], None)
        chat.won = won
        return chat

    assert failure_stage(game(["Nothing happens."])) == "none"
    assert failure_stage(game(["You arrive at drawer 1.", "Nothing happens."])) == "moved around"
    assert (
        failure_stage(game(["You pick up the fork 2 from the drawer 1.", "You arrive at x 1."]))
        == "picked up"
    )
    assert (
        failure_stage(game(["You clean the fork 2 using the sinkbasin 1."]))
        == "heated / cooled / cleaned / lamp on"
    )
    assert failure_stage(game(["You move the fork 2 to the diningtable 1."])) == "placed"
    loop = game(["Nothing happens."] * 6, commands=["look", "inventory"] * 3)
    summary = failures([loop, game(["You arrive at drawer 1."], won=True)])
    assert summary == {"lost": 1, "furthest_milestone": {"none": 1}, "ended_in_loop": 1}
    assert auc([0.9, 0.5], [0.1, 0.5]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert auc([0.3], []) is None


def test_search_counts_receptacles_and_the_task_object_known_answer():
    """Receptacles count once and only when reached; the task's object counts as taken only after a reply showed
    it and a ``take`` of it was accepted (an object of another class, or a refused take, does not count)."""
    from agents.game_chat import GameChat
    from experiments.eval_alfworld import search

    def game(task, steps):
        chat = GameChat(f"You are in the middle of a room.\n\nYour task is to: {task}")
        for command, reply in steps:
            chat.add(command, reply, [], None)
        return chat

    looked_and_took = game(
        "put a clean cloth in sinkbasin.",
        [
            (
                "go to countertop 1",
                "You arrive at countertop 1. On the countertop 1, you see a cloth 1, a candle 2.",
            ),
            ("go to shelf 9", "Nothing happens."),
            ("go to countertop 1", "Nothing happens."),
            ("take candle 2 from countertop 1", "You pick up the candle 2 from the countertop 1."),
            ("go to toilet 1", "You arrive at toilet 1. On the toilet 1, you see nothing."),
            ("take cloth 1 from countertop 1", "You pick up the cloth 1 from the countertop 1."),
        ],
    )
    walked_past = game(
        "cool some apple and put it in fridge.",
        [
            ("go to fridge 1", "You arrive at fridge 1. The fridge 1 is closed."),
            ("open fridge 1", "You open the fridge 1. The fridge 1 is open. In it, you see a apple 3."),
            ("take apple 3 from fridge 1", "Nothing happens."),
        ],
    )
    never_saw = game("examine the pillow with the desklamp.", [("look", "You are facing nothing.")])
    assert search([looked_and_took, walked_past, never_saw]) == {
        "games": 3,
        "receptacles_per_game": pytest.approx((2 + 1 + 0) / 3),
        "goal_object_shown": 2,
        "goal_object_shown_and_taken": 1,
    }


def test_chat_episode_is_one_row_with_the_sft_mask(expert_run, tiny):
    """The rollout layout of a multi-turn game (one engine call per turn, each prompt extending the last) is one
    row whose targets are exactly the tokens SFT trains on the same chat: the commands and their end-of-turn
    tokens; the game's replies sit in the row as context (``targets`` 0)."""
    from agents.engines.prompting import encode_prompt, render_prompt
    from agents.rl.oreo_data import conversation_row, load_trajectories
    from agents.rl.rollout import Episode, Segment, episode_rows, make_rollout_batch

    out, _ = expert_run
    tokenizer = tiny[1]
    conversation = load_trajectories(out / "train.jsonl")[0].conversation
    episode = Episode("q", "", "p")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for turn, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        prompt = encode_prompt(tokenizer, render_prompt(tokenizer, conversation[:turn]))
        sampled = tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [end_of_turn]
        episode.segments.append(Segment(prompt, sampled, [-0.5] * len(sampled), [len(sampled) - 1]))
        episode.step_rewards.append(0.0)
    rows = episode_rows(episode, max_response_tokens=4096)
    assert len(rows) == 1
    row, sft = rows[0], conversation_row(tokenizer, conversation, "step", 4096)
    assert row.prompt_ids == sft.context
    assert row.response_ids == sft.response[: len(row.response_ids)]
    assert row.targets == sft.action[: len(row.response_ids)] and sum(row.targets) == sum(sft.action)
    batch = make_rollout_batch([episode], int(tokenizer.pad_token_id or 0), 4096)
    assert batch.tokens.response_mask.sum() == sum(len(s.response_ids) for s in episode.segments)
    assert batch.episode_mask.tolist()[0] == [float(t) for t in row.targets]
    assert batch.sampled_logprobs[0][batch.tokens.response_mask[0] == 1].eq(-0.5).all()
    # values laid out per episode come back on the target tokens only
    spread = batch.per_episode([2.0])
    assert spread[0].tolist() == [2.0 * t for t in row.targets]


def test_grpo_plays_alfworld_games_as_a_chat_and_trains_only_commands(tiny):
    """GRPO's own rollouts on real generated games: one engine call per turn for the wave, the chat view, every
    trained token one the engine sampled (never the game's text), and an update that moves the policy towards
    the better episode of a group."""
    import copy

    import torch

    from agents.engines import HFEngine
    from agents.game_chat import ChatGameAdapter
    from agents.rl.grpo import GRPO, GRPOConfig

    model, tokenizer = tiny
    model = copy.deepcopy(model)
    engine = HFEngine(model, tokenizer)
    config = GRPOConfig(
        prompts_per_update=1,
        group_size=2,
        max_steps=3,
        max_new_tokens=6,
        kl_coef=0.0,
        learning_rate=5e-3,
        max_response_tokens=2048,
        autocast="off",
        verbose=0,
        log_formats=(),
        seed=0,
    )
    agent = GRPO(engine, "openr/ALFWorld-v0", config, env_kwargs={"source": "generated", "num_games": 4})
    calls = engine.stats.calls
    episodes = agent.collect(1, 2)
    assert engine.stats.calls - calls == 3  # one call per turn for both games of the group
    stats = agent.last_rollout_stats  # where the rollout time went: the engine (LLM) and the game engine
    assert stats["time/rollout_engine_seconds"] > 0 and stats["time/rollout_env_seconds"] > 0
    adapter = agent.adapter(agent._train_vec_env.envs[0])
    assert isinstance(adapter, ChatGameAdapter)
    assert episodes[0].problem_id == episodes[1].problem_id and all(len(e.segments) == 3 for e in episodes)
    rollout = agent.tokenize(episodes)
    for index, episode in enumerate(episodes):
        rows = [r for r, e in enumerate(rollout.row_episode) if e == index]
        trained = [
            int(token)
            for r in rows
            for token, on in zip(
                rollout.tokens.input_ids[r][rollout.tokens.response_positions[r] + 1],
                rollout.tokens.response_mask[r],
            )
            if on
        ]
        assert trained == [t for s in episode.segments for t in s.response_ids]
    first = episodes[0].segments[0].prompt_ids
    assert tokenizer.decode(first).count("<|im_start|>user") == 1 and "Your task is to:" in tokenizer.decode(
        first
    )

    # the tiny model wins nothing: a fake outcome (test only) makes the first episode of the group the better one
    episodes[0].step_rewards[-1] = 1.0
    rollout = agent.tokenize(episodes)
    prepared = agent.prepare(rollout)
    advantages = prepared.tensors["advantages"]
    assert bool(((advantages != 0) <= (rollout.tokens.response_mask > 0)).all())

    def mean_logprob(episode_index: int) -> float:
        out = agent.no_grad_forward(rollout.tokens)
        rows = [r for r, e in enumerate(rollout.row_episode) if e == episode_index]
        mask = rollout.tokens.response_mask[rows]
        return float((out.logprobs[rows] * mask).sum() / mask.sum())

    before = [mean_logprob(0), mean_logprob(1)]
    rows = list(range(len(rollout)))
    agent.model.train()
    for _ in range(3):
        agent.optimise(
            rollout,
            rows,
            {**prepared.tensors, "old_logprobs": agent.no_grad_forward(rollout.tokens).logprobs},
        )
    after = [mean_logprob(0), mean_logprob(1)]
    assert after[0] > before[0] and after[1] < before[1]
    assert torch.isfinite(torch.tensor(after)).all()


def test_recorded_chats_render_the_recorded_turns(expert_run):
    """``eval_alfworld --calibrate-records`` reads V over recorded games: their chats render the turns verbatim."""
    from experiments.eval_alfworld import recorded_chats
    from wrappers.recorder import read_trajectories

    out, _ = expert_run
    chats = recorded_chats(str(out / "train.jsonl"))
    records = list(read_trajectories(out / "train.jsonl"))
    assert len(chats) == len(records) and all(c.won for c in chats)
    for chat, record in zip(chats, records):
        assert chat.conversation() == record["extras"]["conversations"]
