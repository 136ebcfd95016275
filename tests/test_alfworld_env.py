"""openr/ALFWorld-v0 on the real TextWorld engine: real and generated games, experts, bad input, branching."""

from __future__ import annotations

import pickle
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

import reasoning_gym  # noqa: E402,F401
from reasoning_gym.alfworld import run_expert  # noqa: E402
from reasoning_gym.alfworld.engine import GameLoadError, translate  # noqa: E402
from reasoning_gym.alfworld.generate import TASK_TYPES, generate_game  # noqa: E402

pytestmark = pytest.mark.alfworld

REAL_GAME = "alfworld/real_sample_heat_potato_FloorPlan14"


@pytest.fixture(scope="module")
def real_game(data_dir: Path) -> Path:
    folder = data_dir / REAL_GAME
    if not (folder / "game.tw-pddl").is_file():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def real_env(real_game: Path):
    env = gym.make("openr/ALFWorld-v0", game_files=[real_game])
    yield env
    env.close()


@pytest.fixture(scope="module")
def generated_env():
    # The default cache (~/.cache/openr-gym/alfworld) keeps generated games between runs.
    env = gym.make("openr/ALFWorld-v0", num_games=12)
    yield env
    env.close()


def test_real_game_loads_and_handcoded_expert_wins_in_16_steps(real_env) -> None:
    obs, info = real_env.reset(seed=0)
    assert info["problem"] == "heat some potato and put it in sinkbasin."
    assert info["task_type"] == "pick_heat_then_place_in_recep"
    assert "Your task is to: heat some potato and put it in sinkbasin." in obs
    assert "go to countertop 1" in info["admissible_commands"]
    result = run_expert(real_env, "handcoded")
    assert result["won"] and result["steps"] == 16


def test_real_game_planner_expert_wins(real_env) -> None:
    real_env.reset(seed=0)
    plan = real_env.unwrapped.expert_plan()
    assert plan and plan[-1] == "move potato 2 to sinkbasin 1"
    rewards = []
    for command in plan:
        obs, reward, terminated, truncated, info = real_env.step(command)
        rewards.append(reward)
    assert (
        terminated
        and not truncated
        and info["won"]
        and info["is_success"]
        and rewards[-1] == 1.0
        and sum(rewards) == 1.0
    )
    assert info["steps"] == plan and info["step_index"] == len(plan)


def test_generated_games_cover_six_task_types_and_planner_solves_all(generated_env) -> None:
    seen = set()
    for seed in range(6):
        obs, info = generated_env.reset(options={"problem_id": f"gen-train-{seed:06d}"})
        seen.add(info["task_type"])
        assert info["problem"] and info["problem"] in obs
        assert not info["won"]
        result = run_expert(generated_env, "planner")
        assert result["won"], (info["problem_id"], result)
    assert seen == set(TASK_TYPES)


def test_think_and_bad_steps_never_raise_and_leave_the_world_unchanged(generated_env) -> None:
    obs, info = generated_env.reset(options={"problem_id": "gen-train-000000"})
    admissible = info["admissible_commands"]
    space = generated_env.observation_space
    cases = [
        ("think: where is the creditcard?", False),
        ("", True),
        ("   \n\t ", True),
        ("x" * 100_000, True),
        ("fly to the moon", True),
        ("go to the kitchen 42", True),
        ("take creditcard 99 from dresser 1", True),
        ("\x00\x01 go \ud800", True),
        (12345, True),
        (None, True),
    ]
    for action, invalid in cases:
        obs, reward, terminated, truncated, info = generated_env.step(action)
        assert info["invalid"] is invalid, (action, info["invalid_reason"])
        assert info["admissible_commands"] == admissible  # nothing happened in the world
        assert reward == 0.0 and not terminated
        assert obs in space
        if invalid:
            assert info["feedback"].startswith("Nothing happens.") and info["invalid_reason"]
    assert info["step_index"] == len(cases)


def test_command_spelling_variants_are_accepted(generated_env) -> None:
    _, info = generated_env.reset(options={"problem_id": "gen-train-000000"})
    target = info["admissible_commands"][0]
    _, _, _, _, info = generated_env.step(f"> {target.upper()}.")
    assert not info["invalid"] and info["steps"][-1] == target


def test_get_state_set_state_branches_exactly(generated_env) -> None:
    env = generated_env.unwrapped
    env.reset(options={"problem_id": "gen-train-000004"})
    plan = env.expert_plan()
    env.step("think: plan first")
    env.step(plan[0])
    snapshot = env.get_state()
    pickle.dumps(snapshot)
    expected_obs, _, _, _, expected_info = env.step(plan[1])
    env.step("look")
    env.set_state(snapshot)
    assert env.get_state() == snapshot
    obs, _, _, _, info = env.step(plan[1])
    assert obs == expected_obs and info["admissible_commands"] == expected_info["admissible_commands"]
    assert env.expert_plan() == plan[2:]


def test_set_state_operator_replay_equals_command_replay(generated_env) -> None:
    env = generated_env.unwrapped
    env.reset(options={"problem_id": "gen-train-000005"})
    for command in env.expert_plan()[:5]:
        env.step(command)
    snapshot = env.get_state()
    assert len(snapshot["operators"]) == len(snapshot["commands"]) == 5
    facts = lambda: sorted(map(str, env.textworld_env._wrapped_env._wrapped_env._pddl_state.facts))  # noqa: E731
    env.set_state(snapshot)
    obs, _, _, _, info = env.step("look")
    fast = (obs, info["admissible_commands"], facts())
    env.set_state({**snapshot, "operators": []})  # no operators: replays the commands through the game
    obs, _, _, _, info = env.step("look")
    assert (obs, info["admissible_commands"], facts()) == fast


def test_reset_is_seeded(generated_env) -> None:
    first = [generated_env.reset(seed=s)[1]["problem_id"] for s in (3, 4, 5)]
    again = [generated_env.reset(seed=s)[1]["problem_id"] for s in (3, 4, 5)]
    assert first == again


def test_check_env_passes_without_warnings(real_game: Path) -> None:
    env = gym.make("openr/ALFWorld-v0", game_files=[real_game]).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    assert [str(w.message) for w in caught] == []
    env.close()


def test_generation_is_deterministic_and_validated() -> None:
    a, b = generate_game(7), generate_game(7)
    assert a.game == b.game and a.traj_data == b.traj_data and a.plan
    assert a.traj_data["task_type"] == TASK_TYPES[7 % 6]
    assert a.game["solvable"] and a.game["walkthrough"] == a.plan


def test_translator_failure_is_reported_and_argv_restored() -> None:
    argv = list(sys.argv)
    with pytest.raises(GameLoadError):
        translate("(define (domain broken)", "(define (problem p) (:domain other))")
    assert sys.argv == argv


def test_unknown_problem_id_is_a_clear_error(generated_env) -> None:
    with pytest.raises(KeyError, match="unknown ALFWorld problem_id"):
        generated_env.reset(options={"problem_id": "no-such-game"})


def test_alfworld_data_layout_is_found_by_split(real_game: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    trial = (
        tmp_path
        / "json_2.1.1"
        / "valid_seen"
        / "pick_heat_then_place_in_recep-Potato-None-SinkBasin-14"
        / "trial_1"
    )
    trial.mkdir(parents=True)
    for name in ("game.tw-pddl", "traj_data.json"):
        shutil.copy(real_game / name, trial / name)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    env = gym.make("openr/ALFWorld-v0", split="valid_seen")
    assert env.unwrapped.pool.source == "alfworld"
    _, info = env.reset(seed=0)
    assert info["problem_id"] == "valid_seen/pick_heat_then_place_in_recep-Potato-None-SinkBasin-14/trial_1"
    assert info["problem"] == "heat some potato and put it in sinkbasin."
    with pytest.raises(ValueError, match="no ALFWorld games"):
        gym.make("openr/ALFWorld-v0", split="valid_unseen")
    env.close()


def test_broken_game_file_is_reported_not_exited(real_game: Path, tmp_path: Path) -> None:
    import json

    game = json.loads((real_game / "game.tw-pddl").read_text())
    # fast-downward's translator calls sys.exit() on an undeclared predicate
    game["pddl_problem"] = game["pddl_problem"].replace("(isHot ?o)", "(isWarm ?o)")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "game.tw-pddl").write_text(json.dumps(game))
    argv = list(sys.argv)
    env = gym.make("openr/ALFWorld-v0", game_files=[folder], cache_dir=tmp_path / "cache")
    with pytest.raises(GameLoadError, match="SystemExit: Undeclared predicate"):
        env.reset(seed=0)
    assert sys.argv == argv
    env.close()


def test_long_histories_are_elided_within_the_observation_space(real_game: Path) -> None:
    env = gym.make(
        "openr/ALFWorld-v0", game_files=[real_game], max_observation_chars=3500, max_episode_steps=60
    )
    obs, _ = env.reset(seed=0)
    for index in range(40):
        obs, _, _, truncated, info = env.step(f"think: thought number {index} " + "hmm " * 30)
    assert len(obs) <= 3500 and obs in env.observation_space
    assert "earlier steps omitted" in obs and "thought number 39" in obs
    assert "Your task is to: heat some potato" in obs and not truncated
    env.close()


def test_truncation_comes_from_max_episode_steps(real_game: Path) -> None:
    env = gym.make("openr/ALFWorld-v0", game_files=[real_game], max_episode_steps=2)
    env.reset(seed=0)
    assert env.step("look")[3] is False
    _, reward, terminated, truncated, _ = env.step("look")
    assert truncated and not terminated and reward == 0.0
    env.close()


def test_sync_vector_env_steps_text_actions(real_game: Path) -> None:
    envs = gym.make_vec("openr/ALFWorld-v0", num_envs=2, vectorization_mode="sync", game_files=[real_game])
    obs, info = envs.reset(seed=0)
    assert len(obs) == 2 and all("Your task is to" in o for o in obs)
    obs, reward, terminated, truncated, info = envs.step(["go to countertop 2", "think: first find a potato"])
    assert list(info["invalid"]) == [False, False] and "You arrive at countertop 2" in obs[0]
    envs.close()


def test_status_line_known_answer() -> None:
    """Only accepted commands count; a wrong-object transformation marks nothing; a move empties the hand."""
    from reasoning_gym.alfworld.status import game_status, room_receptacles

    intro = (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a fridge 1, "
        "and a sinkbasin 1.\n\nYour task is to: clean some apple and put it in fridge."
    )
    assert room_receptacles(intro) == ["cabinet 1", "fridge 1", "sinkbasin 1"]
    steps = [
        ("go to cabinet 1", "You arrive at cabinet 1. On the cabinet 1, you see a apple 2."),
        ("go to shelf 9", 'Nothing happens. "go to shelf 9" is not a command you can do now.'),
        ("take apple 2 from cabinet 1", "You pick up the apple 2 from the cabinet 1."),
        ("go to sinkbasin 1", "You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing."),
        ("heat bread 1 with sinkbasin 1", "Nothing happens."),
        ("clean apple 2 with sinkbasin 1", "You clean the apple 2 using the sinkbasin 1."),
    ]
    assert game_status(intro, steps) == (
        "Task: clean some apple and put it in fridge. Holding: apple 2 (cleaned). Not visited: fridge 1."
    )
    done = [
        *steps,
        ("go to fridge 1", "You arrive at fridge 1."),
        ("move apple 2 to fridge 1", "You move it."),
    ]
    assert game_status(intro, done).endswith("Holding: nothing. Not visited: none.")
    assert game_status("no room text", []) == "Holding: nothing. Not visited: none."


def test_goal_object_reads_the_six_task_templates() -> None:
    from reasoning_gym.alfworld.status import goal_object

    assert goal_object("put a clean cloth in sinkbasin.") == "cloth"
    assert goal_object("put some spraybottle on toilet.") == "spraybottle"
    assert goal_object("heat some egg and put it in garbagecan.") == "egg"
    assert goal_object("look at cd under the desklamp.") == "cd"
    assert goal_object("examine the pillow with the floorlamp.") == "pillow"
    assert goal_object("put two keychain in safe.") == "keychain"
    assert goal_object("find two soapbar and put them in cabinet.") == "soapbar"
    assert goal_object("go to the kitchen") is None


def test_show_status_observation_matches_the_chat_view() -> None:
    """The env's status line and the one the chat view rebuilds from the replies agree at every step."""
    from agents.game_chat import ChatGameAdapter
    from reasoning_gym.alfworld.status import ADMISSIBLE_MARK, STATUS_MARK

    def status_of(text: str) -> str:
        return text.split(STATUS_MARK)[1].split(ADMISSIBLE_MARK)[0]

    env = gym.make("openr/ALFWorld-v0", num_games=12, show_status=True, show_admissible_commands=True)
    try:
        observation, info = env.reset(options={"problem_id": "gen-train-000002"})
        chat = ChatGameAdapter.from_env(env).start(observation, info)
        assert STATUS_MARK not in chat.opening
        lines = [status_of(observation)]
        plan = env.unwrapped.expert_plan()
        for command in [*plan[:2], "go to nowhere 7", *plan[2:]]:
            observation, _, terminated, _, info = env.step(command)
            chat.add(command, str(info["feedback"]), info["admissible_commands"], None)
            lines.append(status_of(observation))
            assert status_of(chat.prompt()[-1]["content"]) == lines[-1]
        assert terminated
        assert "Holding: nothing." in lines[0] and "Holding: nothing." in lines[-1]
        assert any("Holding: nothing." not in line for line in lines)  # the expert carried the object
        assert len(lines[-1]) < len(lines[0])  # receptacles left the "Not visited" list
    finally:
        env.close()
