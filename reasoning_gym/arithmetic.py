"""``openr/Arithmetic-v0``: procedurally generated multi-step arithmetic word problems, offline and unlimited.

Why it exists: MATH and GSM8K are far beyond small models, so nothing learns on them on a CPU. This generator
starts below what SmolLM2-135M can already do (one operation on single digits) and climbs to several operations
with parentheses, multi-digit numbers and exact division. Every problem carries a worked solution in the env's
step format, for supervised warm-starts and tests; it is never shown in the observation.

Problem ids are ``"L<level>-<seed>"``: the same id always regenerates the same problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from reasoning_gym.base import ProblemSource, ReasoningEnv
from reasoning_gym.data import Problem, parse_levels

__all__ = ["LEVELS", "ArithmeticEnv", "ArithmeticSource", "generate_problem"]

_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Ema",
    "Finn",
    "Gita",
    "Hugo",
    "Ines",
    "Jack",
    "Kemi",
    "Liam",
    "Mia",
    "Noor",
)
_ITEMS = (
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "cookies",
    "stamps",
    "shells",
    "coins",
    "books",
    "cards",
)
_ID = re.compile(r"^L(\d{1,3})-(\d{1,19})$")


@dataclass(frozen=True)
class Level:
    """How hard a level is: number of operations, operand range, allowed operators, word problem or expression."""

    operations: int
    max_operand: int
    operators: str
    words: bool


LEVELS: dict[int, Level] = {
    1: Level(operations=1, max_operand=9, operators="+-", words=True),
    2: Level(operations=1, max_operand=9, operators="+-*", words=True),
    3: Level(operations=2, max_operand=20, operators="+-*", words=True),
    4: Level(operations=3, max_operand=50, operators="+-*/", words=True),
    5: Level(operations=4, max_operand=99, operators="+-*/", words=False),
}


def _operand(rng: np.random.Generator, level: Level, low: int = 1) -> int:
    return int(rng.integers(low, level.max_operand + 1))


def _next_operation(rng: np.random.Generator, level: Level, value: int) -> tuple[str, int]:
    """An operator and operand applied to ``value`` that keep the result a non-negative integer."""
    for _ in range(100):
        op = level.operators[int(rng.integers(len(level.operators)))]
        if op == "+":
            return op, _operand(rng, level, low=1)
        if op == "-" and value >= 1:
            return op, int(rng.integers(1, min(value, level.max_operand) + 1))
        if op == "*":
            return op, int(rng.integers(2, min(level.max_operand, 12 if level.operations > 1 else 9) + 1))
        if op == "/" and value >= 2:
            divisors = [d for d in range(2, min(value, 12) + 1) if value % d == 0]
            if divisors:
                return op, divisors[int(rng.integers(len(divisors)))]
    return "+", _operand(rng, level)


_SYMBOL = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}
_PY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _word_problem(rng: np.random.Generator, level: Level) -> tuple[str, list[str], int]:
    name = _NAMES[int(rng.integers(len(_NAMES)))]
    item = _ITEMS[int(rng.integers(len(_ITEMS)))]
    value = _operand(rng, level)
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for index in range(level.operations):
        op, operand = _next_operation(rng, level, value)
        then = "Then " if index else ""
        sentences.append(
            {
                "+": f"{then}{name} gets {operand} more {item}.",
                "-": f"{then}{name} gives away {operand} {item}.",
                "*": f"{then}{name}'s number of {item} becomes {operand} times as many.",
                "/": f"{then}{name} splits the {item} into {operand} equal groups and keeps one group.",
            }[op]
        )
        result = _PY[op](value, operand)
        steps.append(f"{value} {_SYMBOL[op]} {operand} = {result}")
        value = result
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), steps, value


def _expression_problem(rng: np.random.Generator, level: Level) -> tuple[str, list[str], int]:
    """``((a op b) op c) op d ...`` with parentheses that force the evaluation order of the worked steps."""
    value = _operand(rng, level, low=10)
    expression = str(value)
    steps = []
    for index in range(level.operations):
        op, operand = _next_operation(rng, level, value)
        expression = (
            f"({expression} {_SYMBOL[op]} {operand})"
            if index < level.operations - 1
            else (f"{expression} {_SYMBOL[op]} {operand}")
        )
        result = _PY[op](value, operand)
        steps.append(f"{value} {_SYMBOL[op]} {operand} = {result}")
        value = result
    return f"Compute ${expression}$.", steps, value


def generate_problem(level: int, seed: int) -> Problem:
    """The problem with id ``L<level>-<seed>`` (deterministic), with its worked step-by-step solution."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    spec = LEVELS[level]
    rng = np.random.default_rng([level, seed])
    question, steps, answer = (_word_problem if spec.words else _expression_problem)(rng, spec)
    steps.append(f"The answer is \\boxed{{{answer}}}.")
    return Problem(
        id=f"L{level}-{seed}",
        question=question,
        answer=str(answer),
        solution="\n\n".join(steps),
        meta={"level": level, "seed": seed},
    )


class ArithmeticSource(ProblemSource):
    """Unlimited problems at the given levels; ``sample`` draws a level and a seed from the env's RNG."""

    max_question_chars = 512
    _MAX_SEED = 2**31 - 1

    def __init__(self, levels: int | Iterable[int]) -> None:
        self.levels = tuple(sorted(parse_levels(levels, allowed=LEVELS) or ()))
        if not self.levels:
            raise ValueError(f"levels must be a non-empty subset of {sorted(LEVELS)}, got {levels!r}")

    def sample(self, rng: np.random.Generator) -> Problem:
        level = self.levels[int(rng.integers(len(self.levels)))]
        return generate_problem(level, int(rng.integers(self._MAX_SEED)))

    def get(self, problem_id: str) -> Problem:
        match = _ID.match(str(problem_id))
        if not match or int(match.group(1)) not in LEVELS:
            raise KeyError(
                f"openr/Arithmetic-v0: problem ids look like 'L1-42' (level-seed: a level in {sorted(LEVELS)}, a seed of "
                f"at most 19 digits), got {problem_id!r}"
            )
        return generate_problem(int(match.group(1)), int(match.group(2)))

    def __len__(self) -> int:
        return len(self.levels) * self._MAX_SEED


class ArithmeticEnv(ReasoningEnv):
    """Procedural arithmetic word problems (offline); see ``ReasoningEnv`` for the step protocol.

    ## Levels
    1: one + or - on single digits; 2: one +, - or x on single digits; 3: two operations, operands up to 20;
    4: three operations incl. exact division, operands up to 50; 5: an expression with nested parentheses,
    four operations, operands up to 99, exact division.

    ## Arguments
    ``level`` (int) or ``levels`` (several, drawn uniformly); other arguments as ``ReasoningEnv``.
    ``env.unwrapped.problem.solution`` holds the worked solution (never observed).
    """

    def __init__(self, level: int | None = None, levels: Iterable[int] | None = None, **kwargs: Any) -> None:
        if level is not None and levels is not None:
            raise ValueError("give level or levels, not both")
        chosen = level if level is not None else (levels if levels is not None else [1])
        kwargs.setdefault("max_steps", 10)
        super().__init__(ArithmeticSource(chosen), **kwargs)
