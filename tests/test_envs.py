"""The step-level math environments: registration, check_env, determinism, vector envs, bad input."""

from __future__ import annotations

import json
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import reasoning_gym  # noqa: F401 - registers the ids
from reasoning_gym.arithmetic import LEVELS, generate_problem
from reasoning_gym.data import DatasetNotFoundError

MATH_IDS = ("openr/MATH-v0", "openr/GSM8K-v0", "openr/Arithmetic-v0")


@pytest.fixture
def env_kwargs(request, math500_path, gsm8k_path):
    return {
        "openr/MATH-v0": {"data_path": str(math500_path)},
        "openr/GSM8K-v0": {"data_path": str(gsm8k_path)},
        "openr/Arithmetic-v0": {"levels": [1, 3, 5]},
    }


def test_import_registers_every_id():
    for env_id in (*MATH_IDS, "openr/ALFWorld-v0"):
        assert env_id in gym.registry
        assert gym.spec(env_id).max_episode_steps


def test_module_prefixed_make_works_without_prior_import():
    env = gym.make("reasoning_gym:openr/Arithmetic-v0")
    obs, _ = env.reset(seed=1)
    assert "Problem:" in obs


@pytest.mark.parametrize("env_id", MATH_IDS)
def test_check_env_passes_without_warnings(env_id, env_kwargs):
    env = gym.make(env_id, **env_kwargs[env_id])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", MATH_IDS)
def test_same_seed_same_rollout(env_id, env_kwargs):
    def rollout(seed):
        env = gym.make(env_id, **env_kwargs[env_id])
        env.action_space.seed(seed)
        obs, info = env.reset(seed=seed)
        trace = [obs, info["problem_id"]]
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample()[:50])
            trace += [obs, reward, terminated, truncated]
            if terminated or truncated:
                break
        return trace

    assert rollout(7) == rollout(7)
    assert rollout(7)[1] != rollout(8)[1] or rollout(7)[0] != rollout(8)[0]


def test_reference_answer_never_in_observation_or_info(math500_path):
    env = gym.make("openr/MATH-v0", data_path=str(math500_path))
    obs, info = env.reset(options={"problem_id": "test/precalculus/807.json"})
    problem = env.unwrapped.problem
    assert info["problem_id"] == problem.id
    assert "answer" in info and info["answer"] is None
    assert problem.solution not in obs
    assert problem.answer not in info.values()


def test_worked_solution_solves_and_terminates(math500_path):
    env = gym.make("openr/MATH-v0", data_path=str(math500_path))
    env.reset(options={"problem_id": "test/precalculus/807.json"})
    _, reward, terminated, truncated, info = env.step(env.unwrapped.problem.solution)
    assert terminated and not truncated and reward == 1.0 and info["correct"] is True


def test_wrong_answer_gets_zero_and_custom_rewards():
    env = gym.make("openr/Arithmetic-v0", level=1, correct_reward=2.0, incorrect_reward=-1.0)
    env.reset(seed=0)
    wrong = int(env.unwrapped.problem.answer) + 1
    _, reward, terminated, _, info = env.step(f"The answer is \\boxed{{{wrong}}}.")
    assert terminated and reward == -1.0 and info["correct"] is False and info["answer"] == str(wrong)


def test_is_success_is_the_one_success_key_with_correct_as_its_alias():
    env = gym.make("openr/Arithmetic-v0", level=1)
    _, info = env.reset(seed=0)
    assert info["is_success"] is False and "correct" not in info
    _, _, _, truncated, info = env.step("thinking")
    assert info["is_success"] is False and not truncated
    answer = env.unwrapped.problem.answer
    _, _, terminated, _, info = env.step(f"The answer is \\boxed{{{answer}}}.")
    assert terminated and info["is_success"] is True and info["correct"] is True
    env.reset(seed=0)
    _, _, _, _, info = env.step(f"The answer is \\boxed{{{int(answer) + 1}}}.")
    assert info["is_success"] is False and info["correct"] is False


def test_truncates_at_step_budget():
    env = gym.make("openr/Arithmetic-v0", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step("thinking")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_unwrapped_env_truncates_itself_at_max_steps():
    env = gym.make("openr/Arithmetic-v0", max_steps=2).unwrapped
    env.reset(seed=0)
    assert env.step("a")[3] is False
    assert env.step("b")[3] is True


def test_arithmetic_problem_ids_select_and_regenerate():
    env = gym.make("openr/Arithmetic-v0")
    obs, info = env.reset(options={"problem_id": "L4-123"})
    assert info["problem_id"] == "L4-123"
    assert env.unwrapped.problem == generate_problem(4, 123)
    with pytest.raises(KeyError, match="level-seed"):
        env.reset(options={"problem_id": "nope"})


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_arithmetic_worked_solutions_are_right_and_in_step_format(level):
    env = gym.make("openr/Arithmetic-v0", level=level).unwrapped
    for seed in range(40):
        problem = generate_problem(level, seed)
        assert problem.answer.lstrip("-").isdigit()
        steps = problem.solution.split("\n\n")
        assert len(steps) == LEVELS[level].operations + 1 and "\\boxed{" in steps[-1]
        env.reset(options={"problem_id": problem.id})
        for step in steps[:-1]:
            assert env.step(step)[2] is False
        _, reward, terminated, _, _ = env.step(steps[-1])
        assert terminated and reward == 1.0


def test_arithmetic_levels_get_harder():
    mean_ops = [
        np.mean([generate_problem(level, s).solution.count("=") for s in range(30)]) for level in LEVELS
    ]
    assert mean_ops == sorted(mean_ops) and mean_ops[0] == 1
    assert all(len(generate_problem(1, s).answer) <= 2 for s in range(50))


def test_get_state_set_state_branches_without_replay():
    env = gym.make("openr/Arithmetic-v0", level=3).unwrapped
    env.reset(seed=3)
    env.step("first step")
    state = env.get_state()
    assert len(pickle.dumps(state)) < 2000
    obs_a = env.step("branch A")[0]
    env.set_state(state)
    obs_b, *_ = env.step("branch B")
    assert obs_a.endswith("branch A") and obs_b.endswith("branch B") and "branch A" not in obs_b
    other = gym.make("openr/Arithmetic-v0").unwrapped
    other.set_state(pickle.loads(pickle.dumps(state)))
    assert other.step("branch A")[0] == obs_a


@pytest.mark.parametrize(
    "action, reason",
    [
        ("", "empty step"),
        ("   \n\t ", "empty step"),
        ("x" * 1_000_000, "truncated"),
        ("\x00\x01\x02 binary \udcff", "non-printable"),
        ("so \\boxed{3", "unbalanced"),
        (b"\xff\xfe bytes", "bytes"),
        (12345, "converted to str"),
    ],
)
def test_any_text_is_a_legal_action_and_bad_steps_are_marked(action, reason):
    env = gym.make("openr/Arithmetic-v0", invalid_step_penalty=-0.1)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["invalid"] and reason in info["invalid_reason"]
    assert reward == pytest.approx(-0.1)
    assert env.observation_space.contains(obs)


def test_render_ansi_shows_episode():
    env = gym.make("openr/Arithmetic-v0", render_mode="ansi")
    env.reset(seed=0)
    env.step(env.unwrapped.problem.solution)
    text = env.render()
    assert "Problem:" in text and "correct" in text


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_step(mode):
    envs = gym.make_vec("openr/Arithmetic-v0", num_envs=3, vectorization_mode=mode)
    obs, infos = envs.reset(seed=0)
    assert len(obs) == 3 and all("Problem:" in o for o in obs)
    obs, rewards, terminated, truncated, infos = envs.step(("\\boxed{0}",) * 3)
    assert terminated.all() and rewards.shape == (3,)
    assert set(np.unique(rewards)) <= {0.0, 1.0}
    envs.close()


def test_missing_dataset_gives_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data_path="):
        gym.make("openr/MATH-v0", data_path=str(tmp_path / "missing.jsonl"))


def test_math_filters_by_level_and_subject(math500_path):
    env = gym.make("openr/MATH-v0", data_path=str(math500_path), levels=[1], subjects=["Algebra"])
    problems = env.unwrapped.source.problems
    assert problems and all(p.meta["level"] == 1 and p.meta["subject"] == "Algebra" for p in problems)


def test_gsm8k_answers_and_solutions(gsm8k_path):
    env = gym.make("openr/GSM8K-v0", data_path=str(gsm8k_path))
    env.reset(options={"problem_id": "gsm8k-test-0"})
    problem = env.unwrapped.problem
    assert problem.answer == "18" and "<<" not in problem.solution
    _, reward, terminated, _, _ = env.step(problem.solution)
    assert terminated and reward == 1.0


def test_fuzzed_actions_never_raise():
    rng = np.random.default_rng(0)
    env = gym.make("openr/Arithmetic-v0", level=2)
    env.reset(seed=0)
    pieces = [
        "\\boxed{",
        "}",
        "{",
        "\n\n",
        "The answer is",
        "\\frac{",
        "9^{9^{9",
        "\x00",
        "\U0001f600",
        "é",
        "$",
    ]
    for _ in range(200):
        action = "".join(
            pieces[i] if i < len(pieces) else chr(int(rng.integers(1, 0x10FFFF)))
            for i in rng.integers(0, len(pieces) + 5, size=int(rng.integers(0, 30)))
        )
        obs, _, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            env.reset()


# -- data loading and reset options: every bad input gets a message saying what is wrong with which file ----------
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_empty_file_is_named_as_empty(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetNotFoundError, match=r"empty\.jsonl' is empty"):
        gym.make("openr/MATH-v0", data_path=str(empty))
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no \\*.jsonl files"):
        gym.make("openr/GSM8K-v0", data_path=str(folder))


def test_a_file_of_the_other_dataset_says_so(tmp_path, gsm8k_path, math500_path):
    with pytest.raises(DatasetNotFoundError, match="not in the MATH .*GSM8K file"):
        gym.make("openr/MATH-v0", data_path=str(gsm8k_path))
    with pytest.raises(DatasetNotFoundError, match="not in the GSM8K schema.*MATH file"):
        gym.make("openr/GSM8K-v0", data_path=str(math500_path))


def test_rows_without_answers_are_skipped_with_a_warning(tmp_path):
    row = {"problem": "1+1?", "solution": "\\boxed{2}", "subject": "Algebra", "level": "Level 1"}
    path = _write_jsonl(
        tmp_path / "math.jsonl",
        [
            {**row, "answer": "2", "unique_id": "a"},
            {**row, "answer": "", "unique_id": "b"},
            {**row, "unique_id": "c"},
        ],
    )
    with pytest.warns(UserWarning, match=r"skipped 2 row\(s\) of '.*math\.jsonl' without an answer.*: b, c"):
        env = gym.make("openr/MATH-v0", data_path=path)
    assert [p.id for p in env.unwrapped.source.problems] == ["a"]
    only_blank = _write_jsonl(tmp_path / "blank.jsonl", [{**row, "answer": " ", "unique_id": "b"}])
    with (
        pytest.warns(UserWarning),
        pytest.raises(DatasetNotFoundError, match="no row with both a problem and an answer"),
    ):
        gym.make("openr/MATH-v0", data_path=only_blank)
    with (
        pytest.warns(UserWarning),
        pytest.raises(DatasetNotFoundError, match=r"levels=\[4\].*it has levels \[1\]"),
    ):
        gym.make("openr/MATH-v0", data_path=path, levels=[4])


def test_the_shared_math_train_file_skips_its_rows_without_answers(data_dir):
    from reasoning_gym.data import load_math

    path = data_dir / "math" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with pytest.warns(UserWarning, match="number_theory/7115.json, train/number_theory/7117.json"):
        problems = load_math(path, levels=[5], subjects=["Number Theory"])
    assert all(problem.answer.strip() for problem in problems)


def test_a_missing_path_is_an_error_about_the_path_never_a_hub_lookup(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(
        sys.modules, "datasets", None
    )  # any hub lookup would fail with "datasets ... not installed"
    monkeypatch.chdir(tmp_path)
    for missing in ("data/test.jsonl", "data/math/test500", "./x", "~/nope/file.jsonl", "one_word"):
        with pytest.raises(DatasetNotFoundError, match="no such file or folder"):
            gym.make("openr/MATH-v0", data_path=missing)
    with pytest.raises(DatasetNotFoundError, match="hub"):  # owner/name: a hub dataset is meant
        gym.make("openr/MATH-v0", data_path="someone/some-dataset")


@pytest.mark.parametrize(
    "options, error, message",
    [
        ("L1-3", TypeError, r"must be a dict such as \{'problem_id'"),
        (["problem_id", "L1-3"], TypeError, "valid keys"),
        (
            {"problemid": "L1-3"},
            ValueError,
            r"unknown reset option\(s\) \['problemid'\]; valid options: \['problem_id'\]",
        ),
        ({"problem_id": 1.5}, TypeError, "must be a str"),
        ({"problem_id": "L9-3"}, KeyError, r"level-seed: a level in \[1, 2, 3, 4, 5\]"),
        ({"problem_id": "L1-" + "9" * 5000}, KeyError, "level-seed"),
        ({"problem_id": "L1.5-3"}, KeyError, "level-seed"),
    ],
)
def test_bad_reset_options_name_the_valid_ones(options, error, message):
    env = gym.make("openr/Arithmetic-v0")
    with pytest.raises(error, match=message):
        env.reset(options=options)


def test_unknown_math_problem_id_shows_real_ids(math500_path):
    env = gym.make("openr/MATH-v0", data_path=str(math500_path))
    with pytest.raises(KeyError, match=r"500 problems are loaded, with ids like 'test/"):
        env.reset(options={"problem_id": "precalculus/807"})


@pytest.mark.parametrize(
    "kwargs", [{"level": 1.7}, {"levels": [1, 2.5]}, {"level": True}, {"level": "2"}, {"level": 9}]
)
def test_levels_must_be_integers_in_range(kwargs):
    with pytest.raises(ValueError, match="levels must be"):
        gym.make("openr/Arithmetic-v0", **kwargs)


def test_math_levels_must_be_integers(math500_path):
    with pytest.raises(ValueError, match="levels must be integers"):
        gym.make("openr/MATH-v0", data_path=str(math500_path), levels=[1.7])
    env = gym.make("openr/MATH-v0", data_path=str(math500_path), levels=2)  # one level as a plain int
    assert {p.meta["level"] for p in env.unwrapped.source.problems} == {2}


def test_step_text_deep_copy_shares_the_character_tables_and_not_the_rng():
    """gymnasium's batch_space deep-copies the space per sub-env: the ~65k-character tables are shared (copying them
    made a 64-env make_vec take 82 s), the random generator is each copy's own."""
    import copy

    from reasoning_gym.spaces import StepText

    space = gym.make("openr/Arithmetic-v0").observation_space
    assert isinstance(space, StepText)
    space.seed(0)
    clone = copy.deepcopy(space)
    assert clone == space and clone is not space
    assert clone.character_set is space.character_set and clone.character_list is space.character_list
    assert clone.np_random is not space.np_random
    assert clone.sample() == space.sample()  # same state copied, then independent
    clone.sample()
    assert clone.sample() != space.sample()
    batched = gym.make_vec("openr/Arithmetic-v0", num_envs=4).single_observation_space
    assert batched == space


def test_step_text_over_a_known_charset_reuses_its_tables_and_equals_a_fresh_text():
    """Building the ~65k-character tables took ~45 ms per space (two per env: 128 sub-envs ~11 s of a GRPO
    collection): a second space over the same charset shares them, and is otherwise gymnasium's own Text."""
    from gymnasium.spaces import Text

    from reasoning_gym.base import STEP_CHARSET
    from reasoning_gym.spaces import StepText

    first = StepText(100, charset=STEP_CHARSET)
    second = StepText(50, min_length=2, charset=STEP_CHARSET, seed=3)
    assert second.character_set is first.character_set and second.character_list is first.character_list
    fresh = Text(50, min_length=2, charset=STEP_CHARSET, seed=3)
    assert vars(second).keys() - vars(fresh).keys() == {"_char_array"}
    for name, value in vars(fresh).items():
        if name != "_np_random":
            assert vars(second)[name] == value, name
    assert second.sample() == fresh.sample()  # same seed, same tables: same samples
    assert second == fresh and fresh == second and second != first
    assert second.contains("ab") and not second.contains("a")
    with pytest.raises(ValueError):
        StepText(1, min_length=2, charset=STEP_CHARSET)  # Text's own checks still run
