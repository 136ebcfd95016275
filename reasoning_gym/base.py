"""The step-level reasoning environment that MATH, GSM8K and Arithmetic share.

Why one base: the step protocol (an action is one reasoning step, the episode ends at a final answer, the outcome
judger gives the reward) is the same for every math source; only where problems come from differs.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from reasoning_gym.data import Problem
from reasoning_gym.judging.answer import extract_answer, has_unbalanced_boxed
from reasoning_gym.judging.judge import MathJudger
from reasoning_gym.spaces import StepText

__all__ = [
    "DEFAULT_INSTRUCTION",
    "STEP_CHARSET",
    "ProblemSource",
    "ReasoningEnv",
    "render_observation",
    "sanitize_step",
]

DEFAULT_INSTRUCTION = (
    "Solve the problem step by step. Separate steps with a blank line. Put the final answer in \\boxed{}."
)

# Every printable character of the Basic Multilingual Plane, plus newline and tab: real model output and real
# problems (LaTeX, unicode symbols, CJK) fit; control characters, surrogates and unassigned code points do not,
# and are replaced by U+FFFD (itself in the set) so every observation really lies in the observation space.
STEP_CHARSET = "".join(sorted({chr(c) for c in range(0x10000) if chr(c).isprintable()} | {"\n", "\t"}))
_CHARSET = frozenset(STEP_CHARSET)
_REPLACEMENT = "\ufffd"
_ASCII_PRINTABLE = frozenset(string.printable)


def sanitize_step(text: Any, max_chars: int) -> tuple[str, list[str]]:
    """The step as the env records it (stripped, in-charset, at most ``max_chars``) and why it was changed."""
    problems: list[str] = []
    if not isinstance(text, str):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
            problems.append("bytes decoded as UTF-8")
        else:
            problems.append(f"action of type {type(text).__name__} converted to str")
            text = str(text)
    if len(text) > max_chars * 4:  # cut before scanning a megabyte of text
        text = text[: max_chars * 4]
    text = text.strip()
    if not _ASCII_PRINTABLE.issuperset(text) and not _CHARSET.issuperset(text):
        text = "".join(ch if ch in _CHARSET else _REPLACEMENT for ch in text)
        problems.append("non-printable characters replaced by U+FFFD")
    if len(text) > max_chars:
        problems.append(f"step longer than {max_chars} characters, truncated")
        text = text[:max_chars].rstrip()
    return text, problems


def render_observation(instruction: str, question: str, steps: Sequence[str]) -> str:
    """What the model reads: the instruction, the problem and the steps so far, one blank line apart."""
    head = f"{instruction}\n\nProblem: {question}\n\nSolution:"
    return head + "".join("\n\n" + step for step in steps)


class ProblemSource:
    """Where an env's problems come from: ``sample(rng)`` for ``reset(seed=)``, ``get(id)`` for ``problem_id``."""

    max_question_chars: int = 4096

    def sample(self, rng: np.random.Generator) -> Problem:
        raise NotImplementedError

    def get(self, problem_id: str) -> Problem:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


def _in_charset(problem: Problem) -> Problem:
    """The problem with a question the observation space can hold (rare exotic characters replaced)."""
    if _CHARSET.issuperset(problem.question):
        return problem
    question = "".join(ch if ch in _CHARSET else _REPLACEMENT for ch in problem.question)
    return dataclasses.replace(problem, question=question)


class ListSource(ProblemSource):
    """A fixed list of problems (MATH, GSM8K)."""

    def __init__(self, problems: Sequence[Problem], env_id: str) -> None:
        self.problems = [_in_charset(problem) for problem in problems]
        self.env_id = env_id
        self._by_id = {problem.id: index for index, problem in enumerate(self.problems)}
        self.max_question_chars = max(len(problem.question) for problem in self.problems)

    def sample(self, rng: np.random.Generator) -> Problem:
        return self.problems[int(rng.integers(len(self.problems)))]

    def get(self, problem_id: str) -> Problem:
        if problem_id not in self._by_id:
            examples = ", ".join(repr(problem.id) for problem in self.problems[:3])
            raise KeyError(
                f"{self.env_id}: unknown problem_id {problem_id!r}; {len(self.problems)} problems are loaded, with "
                f"ids like {examples} (env.unwrapped.source.problems lists them)"
            )
        return self.problems[self._by_id[problem_id]]

    def __len__(self) -> int:
        return len(self.problems)


RESET_OPTIONS = ("problem_id",)


def _problem_id_option(options: Any) -> str | None:
    """The ``problem_id`` of ``reset(options=...)`` (None: sample one); anything else is a clear error."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise TypeError(
            f"reset(options=...) must be a dict such as {{'problem_id': ...}} (valid keys: {list(RESET_OPTIONS)}), "
            f"got {type(options).__name__}"
        )
    unknown = sorted(str(key) for key in options if key not in RESET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; valid options: {list(RESET_OPTIONS)}")
    problem_id = options.get("problem_id")
    if problem_id is None:
        return None
    if not isinstance(problem_id, (str, int, np.integer)) or isinstance(problem_id, bool):
        raise TypeError(
            f"options['problem_id'] must be a str, got {type(problem_id).__name__}: {problem_id!r}"
        )
    return str(problem_id)


class ReasoningEnv(gym.Env[str, str]):
    """Step-level reasoning: the agent writes a solution one step at a time.

    ## Description
    Each episode is one problem. The observation is the instruction, the problem and the steps written so far; the
    action is the next step. The episode ends when a step states a final answer (``\\boxed{...}`` or a line "The
    answer is ..."), which the outcome judger compares with the hidden reference answer.

    ## Action Space
    ``Text(max_step_chars, charset=STEP_CHARSET)``. Any ``str`` is accepted: empty, over-long, non-printable or
    brace-unbalanced steps are recorded (sanitised) and marked in ``info["invalid"]`` / ``info["invalid_reason"]``.

    ## Observation Space
    ``Text`` over the same charset, long enough for the longest problem plus ``max_steps`` full steps.

    ## Rewards
    ``correct_reward`` (1.0) or ``incorrect_reward`` (0.0) at termination, 0 before; ``invalid_step_penalty`` is
    added on invalid steps. Use ``wrappers`` for process rewards and shaping.

    ## Episode End
    Terminated: a step gives a final answer. Truncated: ``max_steps`` steps without one (registration also sets
    ``max_episode_steps`` for the ``TimeLimit`` wrapper).

    ## Information
    ``problem_id``, ``problem`` (question text), ``instruction``, ``steps``, ``step_index``, ``answer`` (the final
    answer this step stated, or None), ``invalid``, ``invalid_reason``; at termination ``correct``. The reference
    answer is never in the observation or ``info``: trusted code reads ``env.unwrapped.problem.answer``.

    ## Reset options
    ``reset(options={"problem_id": id})`` replays one problem; ``options`` must be a dict and ``problem_id`` its only
    key (a typo is an error naming the valid options, an unknown id a ``KeyError`` showing what ids look like).

    ## Arguments
    ``instruction``, ``correct_reward``, ``incorrect_reward``, ``invalid_step_penalty``, ``max_steps``,
    ``max_step_chars``, ``judge_timeout``, ``render_mode`` (``"ansi"``), plus each subclass's data arguments.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    step_delimiter = "\n\n"

    def __init__(
        self,
        source: ProblemSource,
        *,
        instruction: str = DEFAULT_INSTRUCTION,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        invalid_step_penalty: float = 0.0,
        max_steps: int = 20,
        max_step_chars: int = 4096,
        judge_timeout: float = 5.0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        if max_steps < 1 or max_step_chars < 1:
            raise ValueError("max_steps and max_step_chars must be positive")

        self.source = source
        self.instruction, _ = sanitize_step(instruction, 16_384)
        self.correct_reward = float(correct_reward)
        self.incorrect_reward = float(incorrect_reward)
        self.invalid_step_penalty = float(invalid_step_penalty)
        self.max_steps = int(max_steps)
        self.max_step_chars = int(max_step_chars)
        self.render_mode = render_mode
        self.judger = MathJudger(timeout=judge_timeout)
        self.action_space = StepText(max_length=self.max_step_chars, min_length=0, charset=STEP_CHARSET)
        longest_head = len(render_observation(self.instruction, "x" * source.max_question_chars, []))
        self.observation_space = StepText(
            max_length=longest_head + self.max_steps * (self.max_step_chars + len(self.step_delimiter)),
            min_length=0,
            charset=STEP_CHARSET,
        )
        self.problem: Problem | None = None
        self.steps: list[str] = []
        self._num_actions = 0
        self._done = False
        self._last_answer: str | None = None
        self._correct: bool | None = None

    # -- Gymnasium API -------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        problem_id = _problem_id_option(options)
        problem = self.source.sample(self.np_random) if problem_id is None else self.source.get(problem_id)
        if len(problem.question) > self.source.max_question_chars:
            raise ValueError(f"problem {problem.id} is longer than the observation space allows")
        self.problem = problem
        self.steps = []
        self._num_actions = 0
        self._done = False
        self._last_answer = None
        self._correct = None
        return self._observation(), self._info(invalid_reasons=[])

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.problem is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded("the episode is over; call reset()")
        step_text, reasons = sanitize_step(action, self.max_step_chars)
        if not step_text:
            reasons.append("empty step")
        elif has_unbalanced_boxed(step_text):
            reasons.append("unbalanced \\boxed{")
        self._num_actions += 1
        if step_text:
            self.steps.append(step_text)
        answer = extract_answer(step_text) if step_text else None
        self._last_answer = answer
        terminated = answer is not None
        reward = self.invalid_step_penalty if reasons else 0.0
        if terminated:
            self._correct = self.judger.judge(step_text, self.problem.answer)
            reward += self.correct_reward if self._correct else self.incorrect_reward
        truncated = not terminated and self._num_actions >= self.max_steps
        self._done = terminated or truncated
        return self._observation(), float(reward), terminated, truncated, self._info(invalid_reasons=reasons)

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.problem is None:
            return None
        status = ""
        if self._correct is not None:
            status = f"\n\n[answer: {self._last_answer!r} -> {'correct' if self._correct else 'wrong'}]"
        return f"[{self.problem.id}] {self._observation()}{status}\n"

    # -- Snapshots for planners ------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """A small picklable snapshot of the episode (problem, steps, flags) for branching planners."""
        return {
            "problem": self.problem,
            "steps": tuple(self.steps),
            "num_actions": self._num_actions,
            "done": self._done,
            "last_answer": self._last_answer,
            "correct": self._correct,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken by ``get_state`` (from this env or another one of the same kind)."""
        self.problem = state["problem"]
        self.steps = list(state["steps"])
        self._num_actions = int(state["num_actions"])
        self._done = bool(state["done"])
        self._last_answer = state["last_answer"]
        self._correct = state["correct"]

    # -- Helpers ----------------------------------------------------------------------------------------------------
    def judge_steps(self, steps: Sequence[str]) -> bool:
        """The outcome verdict for a finished list of steps on the current problem."""
        if self.problem is None:
            raise gym.error.ResetNeeded("call reset() first")
        return self.judger.judge(self.step_delimiter.join(steps), self.problem.answer)

    def _observation(self) -> str:
        assert self.problem is not None
        return render_observation(self.instruction, self.problem.question, self.steps)

    def _info(self, invalid_reasons: list[str]) -> dict[str, Any]:
        assert self.problem is not None
        info: dict[str, Any] = {
            "problem_id": self.problem.id,
            "problem": self.problem.question,
            "instruction": self.instruction,
            "steps": list(self.steps),
            "step_index": self._num_actions,
            "answer": self._last_answer,
            "invalid": bool(invalid_reasons),
            "invalid_reason": "; ".join(invalid_reasons),
        }
        if self._correct is not None:
            info["correct"] = self._correct  # alias of is_success, present once an answer was judged
        info["is_success"] = bool(self._correct)  # SB3's key: final at the episode's end
        return info
