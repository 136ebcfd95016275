"""Reward wrappers and the trajectory recorder on the real ``openr/Arithmetic-v0`` env."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import reasoning_gym  # noqa: F401  (registers the ids)
from rewards import MathJudger
from wrappers import (
    SCHEMA,
    FunctionReward,
    LengthPenalty,
    OutcomeReward,
    PRMReward,
    StepPenalty,
    TrajectoryRecorder,
    append_jsonl,
    read_trajectories,
)

PROBLEM = {"problem_id": "L1-0"}  # "Gita has 7 stamps. Gita gives away 1 stamps. ..." answer 6


class FakeLengthPRM:
    """A stand-in PRM for reward arithmetic: step j scores 0.1 * (j + 1); counts its calls.
    (The real transformer PRMs are tested in test_prm.py and with PRMReward below.)"""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, questions, step_lists):
        self.calls += 1
        return [[0.1 * (j + 1) for j in range(len(steps))] for steps in step_lists]


def make_env(**kwargs):
    return gym.make("openr/Arithmetic-v0", **kwargs)


def run(env, actions, options=PROBLEM):
    env.reset(seed=0, options=options)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return out


RIGHT = ["7 - 1 = 6", "The answer is \\boxed{6}."]
WRONG = ["7 - 1 = 5", "The answer is \\boxed{5}."]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda e: PRMReward(e, FakeLengthPRM(), per_step="delta", aggregate="min"),
        lambda e: OutcomeReward(e, MathJudger()),
        lambda e: StepPenalty(e, 0.05),
        lambda e: LengthPenalty(e, 0.01, unit="words"),
        lambda e: FunctionReward(e, lambda problem, steps, info: 0.5),
    ],
    ids=["prm", "outcome", "step", "length", "function"],
)
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_wrappers_pass_check_env_and_rebuild_from_spec(wrap):
    env = wrap(make_env())
    check_env(env, skip_render_check=True)
    assert env.spec.additional_wrappers[-1].entry_point.startswith("wrappers.")
    rebuilt = gym.make(env.spec)
    assert type(rebuilt) is type(env)
    assert [r for r, *_ in run(env, WRONG)] == [r for r, *_ in run(rebuilt, WRONG)]


def test_prm_reward_score_delta_and_aggregate():
    prm = FakeLengthPRM()
    rewards = [r for r, *_ in run(PRMReward(make_env(), prm, per_step="score", outcome_weight=0.0), RIGHT)]
    assert rewards == pytest.approx([0.1, 0.2])
    out = run(PRMReward(make_env(), prm, per_step="delta", aggregate="min", prm_weight=2.0), RIGHT)
    # delta: 0.1 - 0.5, then 0.2 - 0.1 + min(0.1, 0.2); times 2; plus the env's outcome reward 1.0 at the end.
    assert [r for r, *_ in out] == pytest.approx([2 * (0.1 - 0.5), 2 * (0.1 + 0.1) + 1.0])
    assert out[-1][3]["prm_scores"] == pytest.approx([0.1, 0.2]) and out[-1][3]["prm_score"] == pytest.approx(
        0.2
    )
    # An empty (invalid) step adds no text: no PRM call, no PRM reward.
    calls = prm.calls
    env = PRMReward(make_env(), prm, per_step="score", outcome_weight=0.0)
    reward, *_ = run(env, [""])[0]
    assert reward == 0.0 and prm.calls == calls
    with pytest.raises(ValueError):
        PRMReward(make_env(), prm, aggregate="max")


def test_prm_reward_with_a_real_tiny_prm():
    pytest.importorskip("transformers")
    from agents.engines.testing import byte_level_tokenizer, tiny_model
    from rewards.prm import StepTagPRM

    model, tokenizer = tiny_model(seed=1, tokenizer=byte_level_tokenizer())
    prm = StepTagPRM(model, tokenizer)
    out = run(PRMReward(make_env(), prm, outcome_weight=0.0, aggregate="product"), RIGHT)
    expected = prm.score(
        ["Gita has 7 stamps. Gita gives away 1 stamps. How many stamps does Gita have now?"], [RIGHT]
    )
    assert out[-1][3]["prm_scores"] == pytest.approx(expected[0], abs=1e-5)
    assert out[-1][0] == pytest.approx(expected[0][1] + expected[0][0] * expected[0][1], abs=1e-5)


def test_outcome_reward_uses_judger_or_env_verdict():
    for judger in (None, MathJudger()):
        env = OutcomeReward(
            make_env(), judger, correct_reward=2.0, incorrect_reward=-1.0, unfinished_reward=-0.5
        )
        right, wrong = run(env, RIGHT), run(env, WRONG)
        assert [r for r, *_ in right] == [0.0, 2.0] and right[-1][3]["correct"] is True
        assert [r for r, *_ in wrong] == [0.0, -1.0] and wrong[-1][3]["correct"] is False
    truncated = run(OutcomeReward(make_env(max_episode_steps=2), unfinished_reward=-0.5), ["a", "b"])
    assert truncated[-1][2] is True and truncated[-1][0] == -0.5


def test_penalties_and_function_reward():
    out = run(StepPenalty(make_env(), 0.1, invalid_penalty=1.0), ["", *RIGHT])
    assert [r for r, *_ in out] == pytest.approx([-1.1, -0.1, 0.9])
    out = run(LengthPenalty(make_env(), 0.1, unit="chars", free=5), RIGHT)
    assert [r for r, *_ in out] == pytest.approx([-0.1 * (9 - 5), 1.0 - 0.1 * (len(RIGHT[1]) - 5)])
    seen = []

    def bonus(problem, steps, info):
        seen.append((problem.answer, len(steps)))
        return 0.25 if "\\boxed" in steps[-1] else 0.0

    out = run(FunctionReward(make_env(), bonus, mode="replace"), RIGHT)
    assert [r for r, *_ in out] == [0.0, 0.25] and seen == [("6", 1), ("6", 2)]
    with pytest.raises(ValueError):
        LengthPenalty(make_env(), unit="tokens")


def test_wrappers_compose_in_vector_envs():
    envs = gym.make_vec(
        "openr/Arithmetic-v0",
        num_envs=2,
        vectorization_mode="sync",
        wrappers=[lambda e: StepPenalty(e, 0.5), lambda e: OutcomeReward(e)],
    )
    envs.reset(seed=0)
    _, rewards, *_ = envs.step(["The answer is \\boxed{123456}.", "no answer yet"])
    assert list(rewards) == [0.0, 0.0]  # OutcomeReward (outermost) replaces the penalised reward
    envs.close()


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_trajectory_recorder_writes_one_line_per_finished_episode(tmp_path):
    path = tmp_path / "runs" / "traj.jsonl"
    env = TrajectoryRecorder(StepPenalty(make_env(), 0.1), path, record_reference=True)
    check_env(env, skip_render_check=True)  # check_env's own episodes are recorded too
    path.unlink(missing_ok=True)
    env.reset(seed=0, options=PROBLEM)
    env.unwrapped  # noqa: B018
    env.get_wrapper_attr("record_step_extras")(logprobs=[-0.5, -1.5], token_ids=[11, 12])
    env.step(RIGHT[0])
    env.step(RIGHT[1])
    env.reset(seed=1, options=PROBLEM)
    env.step(WRONG[0])  # unfinished: not written
    env.reset(seed=2, options=PROBLEM)
    env.get_wrapper_attr("record_episode_extras")(temperature=0.7)
    env.step("")
    env.step(WRONG[1])
    records = list(read_trajectories(path))
    assert len(records) == 2
    first, second = records
    assert first["schema"] == SCHEMA and first["env_id"] == "openr/Arithmetic-v0"
    assert first["problem_id"] == "L1-0" and first["question"].startswith("Gita has 7 stamps")
    assert first["prompt"].endswith("Solution:") and first["steps"] == RIGHT
    assert first["rewards"] == pytest.approx([-0.1, 0.9]) and first["return"] == pytest.approx(0.8)
    assert first["logprobs"] == [[-0.5, -1.5], None] and first["token_ids"] == [[11, 12], None]
    assert first["correct"] is True and first["answer"] == "6" and first["reference_answer"] == "6"
    assert first["terminated"] and not first["truncated"] and first["length"] == 2 and first["seed"] == 0
    assert second["actions"] == ["", WRONG[1]] and second["steps"] == [WRONG[1]]
    assert second["step_infos"][0]["invalid"] is True and second["correct"] is False
    assert second["extras"] == {"temperature": 0.7}
    # A torn last line (full disk) is skipped with a warning, not an error.
    with open(path, "a") as f:
        f.write('{"schema": "openr-gym/traj')
    with pytest.warns(UserWarning, match="torn"):
        assert len(list(read_trajectories(path))) == 2


def test_killed_writer_never_leaves_a_broken_line(tmp_path):
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(
        f"""
        from wrappers.recorder import append_jsonl
        record = {{"steps": ["x" * 20000] * 20, "rewards": list(range(2000))}}
        i = 0
        while True:
            record["i"] = i
            append_jsonl({str(path)!r}, record)
            i += 1
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
        for _ in range(2)
    ]
    deadline = time.time() + 20
    while (not path.exists() or path.stat().st_size < 5_000_000) and time.time() < deadline:
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines = path.read_text().splitlines(keepends=True)
    complete = [line for line in lines if line.endswith("\n")]
    assert len(complete) > 5 and len(lines) - len(complete) <= 1  # at most a torn tail from the last kill
    assert all(len(json.loads(line)["steps"]) == 20 for line in complete)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(list(read_trajectories(path))) == len(complete)
    # The next writer cuts the torn tail first, so the file is entirely valid again.
    append_jsonl(path, {"steps": ["after"]})
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == len(complete) + 1 and all(json.loads(line) for line in lines)


def test_torn_line_ending_mid_utf8_character_is_skipped(tmp_path):
    path = tmp_path / "torn.jsonl"
    append_jsonl(path, {"steps": ["déjà vu"]})
    torn = (json.dumps({"steps": ["café"]}, ensure_ascii=False) + "\n").encode("utf-8")
    cut = torn.index("é".encode()) + 1  # in the middle of the two bytes of "é"
    with open(path, "ab") as f:
        f.write(torn[:cut])
    with pytest.warns(UserWarning, match="torn"):
        assert [r["steps"] for r in read_trajectories(path)] == [["déjà vu"]]


def test_action_with_a_lone_surrogate_is_recorded(tmp_path):
    """Any str is a legal action, including one UTF-8 cannot encode: the episode must not be lost."""
    path = tmp_path / "traj.jsonl"
    env = TrajectoryRecorder(make_env(), path)
    env.reset(seed=0, options=PROBLEM)
    odd = "7 - 1 = 6 \ud800"
    env.step(odd)
    env.step("The answer is \\boxed{6}. ünïcode")
    (record,) = read_trajectories(path)
    assert record["actions"][0] == odd and record["actions"][1].endswith("ünïcode")
    assert record["correct"] is True
    path.read_bytes().decode("utf-8")  # the file itself stays valid UTF-8
