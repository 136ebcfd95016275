"""OpenR's answer-selection rules for a set of finished candidates (best-of-N, beam search, MCTS leaves).

Each rule maps candidate answers (``None`` when a candidate has no final answer) and, for the reward-guided rules,
candidate scores to the *index* of the chosen candidate, so the caller keeps its steps. Voting rules group answers
by ``normalize_answer``; candidates without an answer never win a vote unless no candidate has one. Ties go to the
earliest candidate, so selection is deterministic. The names and definitions follow OpenR
(reason/evaluation/methods.py: ``majority_vote``, ``prm_min_max``, ``prm_min_vote``, ``prm_last_max``,
``prm_last_vote``, ``orm_max``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = [
    "SELECTION_RULES",
    "majority_vote",
    "normalize_answer",
    "orm_max",
    "orm_vote",
    "prm_last_max",
    "prm_last_vote",
    "prm_min_max",
    "prm_min_vote",
    "select",
]

Answers = Sequence[str | None]
StepScores = Sequence[Sequence[float]]
Rule = Callable[[Answers, StepScores | None], int]

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
NO_SCORE = -1.0  # OpenR's value for a candidate without step scores


def normalize_answer(answer: str | None) -> str | None:
    """A voting key: whitespace, ``$``, thousands separators and a trailing period removed; ``12.0`` -> ``12``."""
    if answer is None:
        return None
    text = answer.strip().strip("$").strip()
    text = re.sub(r"\\boxed\{(.*)\}$", r"\1", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    if _NUMBER.match(text):
        text = text.lstrip("+")
        if "." in text:
            text = text.rstrip("0").rstrip(".") or "0"
        if text in ("-0", ""):
            text = "0"
    return text or None


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def _weighted_vote(answers: Answers, weights: Sequence[float]) -> int:
    """Index of the best-weighted candidate of the answer with the largest total weight."""
    if not answers:
        raise ValueError("cannot select from an empty candidate set")
    keys = [normalize_answer(a) for a in answers]
    totals: dict[str, float] = {}
    for key, weight in zip(keys, weights):
        if key is not None:
            totals[key] = totals.get(key, 0.0) + weight
    if not totals:
        return _argmax(weights)
    winner = max(totals, key=lambda k: totals[k])  # max() keeps the first of equal totals
    members = [i for i, key in enumerate(keys) if key == winner]
    return max(members, key=lambda i: (weights[i], -i))


def _reduce(step_scores: StepScores | None, n: int, how: Callable[[Sequence[float]], float]) -> list[float]:
    if step_scores is None:
        raise ValueError("this selection rule needs scores (a PRM, value model or outcome reward model)")
    if len(step_scores) != n:
        raise ValueError(f"got {len(step_scores)} score lists for {n} candidates")
    return [how(s) if len(s) else NO_SCORE for s in step_scores]


def majority_vote(answers: Answers, scores: StepScores | None = None) -> int:
    """Self-consistency: the most frequent answer (scores ignored)."""
    return _weighted_vote(answers, [1.0] * len(answers))


def prm_min_max(answers: Answers, scores: StepScores | None) -> int:
    """The candidate whose weakest step scores highest."""
    return _argmax(_reduce(scores, len(answers), min))


def prm_last_max(answers: Answers, scores: StepScores | None) -> int:
    """The candidate whose last step scores highest."""
    return _argmax(_reduce(scores, len(answers), lambda s: s[-1]))


def prm_min_vote(answers: Answers, scores: StepScores | None) -> int:
    """Answers vote with weight = the candidate's weakest step score."""
    return _weighted_vote(answers, _reduce(scores, len(answers), min))


def prm_last_vote(answers: Answers, scores: StepScores | None) -> int:
    """Answers vote with weight = the candidate's last step score."""
    return _weighted_vote(answers, _reduce(scores, len(answers), lambda s: s[-1]))


def orm_max(answers: Answers, scores: StepScores | None) -> int:
    """The candidate with the highest outcome reward (the last entry of each score list)."""
    return _argmax(_reduce(scores, len(answers), lambda s: s[-1]))


def orm_vote(answers: Answers, scores: StepScores | None) -> int:
    """Answers vote with weight = outcome reward."""
    return _weighted_vote(answers, _reduce(scores, len(answers), lambda s: s[-1]))


SELECTION_RULES: dict[str, Rule] = {
    "majority_vote": majority_vote,
    "prm_min_max": prm_min_max,
    "prm_min_vote": prm_min_vote,
    "prm_last_max": prm_last_max,
    "prm_last_vote": prm_last_vote,
    "orm_max": orm_max,
    "orm_vote": orm_vote,
}


def select(rule: str, answers: Answers, scores: StepScores | None = None) -> int:
    """Apply the rule called ``rule`` (a key of ``SELECTION_RULES``); returns the chosen candidate's index."""
    try:
        fn = SELECTION_RULES[rule]
    except KeyError:
        raise ValueError(f"unknown selection rule {rule!r}; choose from {sorted(SELECTION_RULES)}") from None
    if not answers:
        raise ValueError("cannot select from an empty candidate set")
    return fn(answers, scores)
